"""The libvirt-native path: shapes libvirt expresses, attached through libvirt's device API.

Attached LUKS and qcow2-native disks attached with `attach_native(persistent=True)` show in
`virsh domblklist` and survive save→restore and destroy→start through libvirt alone: the
guest reads the same sha256 after each. `detach_native` removes them again. (Not yet wired
into `hotluks attach`: the operator keeps the monitor path until the integrator connects it.)
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.guest.agent import SyncGuestAgent
from hotluks.lifecycle.native import attach_native, detach_native
from testsupport.libvirtd import define_secret
from testsupport.vms import PASSPHRASE, make_disk

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]


def guest_sha(files: Path, serial: str) -> str:
    with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
        agent.wait_ready(180)
        dev = agent.wait_for_device(serial, timeout=30)
        agent.command("drop-caches")
        return agent.sha256(dev.name)


@pytest.mark.parametrize("shape", ["attached-luks", "qcow2-native"])
def test_native_disk_survives_save_restore_and_destroy_start(
        libvirt_uri: str, guest_domain: Any, virsh: Any, files: Path, shape: str) -> None:
    serial = f"hl-native-{shape[:6]}"
    disk = make_disk(files / "disk", shape, "vdb", "virtio", address=f"<serial>{serial}</serial>")
    with guest_domain() as name, define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
        with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
            agent.wait_ready(180)
        attached = asyncio.run(attach_native(disk.disk(), domain=name, uri=libvirt_uri, persistent=True))
        assert attached.to_json()["path"] == "libvirt-native" and attached.alias
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

        assert virsh("destroy", name).returncode == 0
        started = virsh("start", name)
        assert started.returncode == 0, started.stderr
        assert guest_sha(files, serial) == before

        asyncio.run(detach_native("vdb", domain=name, uri=libvirt_uri, persistent=True, timeout=30))
        assert "vdb" not in virsh("domblklist", name).stdout
        assert "vdb" not in virsh("dumpxml", "--inactive", name).stdout
