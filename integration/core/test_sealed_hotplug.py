"""The plan's QMP commands, bound with sealed secrets, are accepted by a real QEMU and decrypt the disk."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest

from hotluks.backends.base import QMPCommandError
from hotluks.demo.qemu.launcher import start_qemu
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.render.qmp import bound_command
from hotluks.secrets import SecretValue

pytestmark = [pytest.mark.qemu, pytest.mark.cryptsetup]

KEY = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def test_hotplug_with_sealed_secret_reads_the_plaintext(images: Any, monitor_for: Any) -> None:
    vol = images.raw("volume.luks", 8)
    images.luks1(vol)
    images.write_pattern(f"driver=luks,key-secret=sec0,file.driver=file,file.filename={vol}")
    plan = build_plan(Disk.from_xml(images.rewrite("attached-luks-raw", {"/var/lib/hotluks/volume.luks": str(vol)})))
    master = os.urandom(32)
    (images.root / "master.key").write_bytes(master)
    values = {KEY: SecretValue(images.passphrase)}

    with start_qemu(["-object", f"secret,id=masterKey0,format=raw,file={images.root / 'master.key'}"],
                    machine="pc") as proc:
        qmp = monitor_for(proc)
        for step in plan.steps:
            cmd = bound_command(step, values, ("masterKey0", master))
            if step.secret is not None:
                sent = cmd["arguments"]
                assert sent["keyid"] == "masterKey0" and base64.b64decode(sent["iv"])
                assert base64.b64encode(images.passphrase).decode() not in str(cmd)
            qmp(cmd["execute"], cmd["arguments"])
        assert {n["node-name"] for n in qmp("query-named-block-nodes")} >= set(plan.node_names)
        out = qmp.qemu_io(plan.top_node, f"read -P {images.pattern:#x} 0 {images.length}")
        assert f"read {images.length}/{images.length} bytes" in out and "verification failed" not in out, out
        assert images.passphrase.strip() not in proc.output().encode()

        # negative control: a secret sealed under another master key does not open the volume
        wrong = bound_command(plan.steps[0], values, ("masterKey0", os.urandom(32)))
        wrong["arguments"]["id"] = "hl-wrong-key"
        with pytest.raises(QMPCommandError) as info:
            qmp("object-add", wrong["arguments"])  # QEMU may already reject the padding here
            qmp("blockdev-add", {"node-name": "hl-wrong-proto", "driver": "file", "filename": str(vol),
                                 "read-only": True})
            qmp("blockdev-add", {"node-name": "hl-wrong-luks", "driver": "luks", "file": "hl-wrong-proto",
                                 "key-secret": "hl-wrong-key", "read-only": True})
        # bad padding, not UTF-8 (QEMU's luks wants a UTF-8 passphrase), or no keyslot opens
        assert any(w in info.value.desc for w in ("padding", "UTF-8", "password", "keyslot")), info.value
