"""The libvirt-native path: shapes libvirt expresses, attached through libvirt's device API.

Attached LUKS and qcow2-native disks attached with `hotluks attach --path libvirt-native
--persistent` show in `virsh domblklist` and survive save→restore and destroy→start through
libvirt alone: the guest reads the same sha256 after each, and `hotluks status` stays
`attached` (exit 0). `hotluks detach` removes them again, live and from the definition.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.guest.agent import SyncGuestAgent
from testsupport.libvirtd import define_secret, guest_sha
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]


@pytest.mark.parametrize("shape", ["attached-luks", "qcow2-native"])
def test_native_disk_survives_save_restore_and_destroy_start(
        libvirt_uri: str, guest_domain: Any, virsh: Any, files: Path, shape: str, tmp_path: Path) -> None:
    serial = f"hl-native-{shape[:6]}"
    disk = make_disk(files / "disk", shape, "vdb", "virtio", address=f"<serial>{serial}</serial>")
    with guest_domain() as name, define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
        with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
            agent.wait_ready(180)
        common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]

        def consistent() -> bool:
            status = run_cli("status", name, *common, "--json")
            return status.returncode == 0 and [(d["status"], d["consistent"]) for d in
                                               json.loads(status.stdout)["disks"]] == [("attached", True)]

        attached = run_cli("attach", name, disk.xml_path, *common, "--path", "libvirt-native", "--persistent",
                           "--json")
        assert attached.returncode == 0, attached.stderr
        assert json.loads(attached.stdout)["path"] == "libvirt-native"
        assert "vdb" in virsh("domblklist", name).stdout
        with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
            dev = agent.wait_for_device(serial, timeout=30)
            agent.write(dev.name, 4096, os.urandom(4096))
            agent.sync()
        before = guest_sha(files, serial)

        saved = files / "saved.img"
        assert virsh("save", name, str(saved)).returncode == 0
        restored = virsh("restore", str(saved))
        assert restored.returncode == 0, restored.stderr
        assert guest_sha(files, serial) == before
        assert consistent()

        assert virsh("destroy", name).returncode == 0
        started = virsh("start", name)
        assert started.returncode == 0, started.stderr
        assert guest_sha(files, serial) == before
        assert consistent()

        detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "30")
        assert detached.returncode == 0, detached.stderr
        assert "vdb" not in virsh("domblklist", name).stdout
        assert "vdb" not in virsh("dumpxml", "--inactive", name).stdout
        assert json.loads(run_cli("status", name, *common, "--json").stdout)["disks"] == []
        assert not leaks(PASSPHRASE, [attached.stdout, attached.stderr, detached.stdout, detached.stderr])
