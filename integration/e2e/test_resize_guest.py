"""A real Linux guest (TCG) sees a disk grow when ``hotluks resize`` grows it, reads and writes the new
space, and (detached header) the guest's write past the old end decrypts on the host."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path

import pytest

from hotluks.demo.guest.vm import BootedGuest
from testsupport.vms import PASSPHRASE, Monitor, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]

MIB = 1 << 20
SHAPES = ("detached-header-qcow2", "detached-header-raw", "attached-luks", "qcow2-native")


def wait_for_size(guest: BootedGuest, serial: str, size: int, timeout: float = 15.0) -> int:
    """The size the guest reports in /sys/block/*/size for ``serial``, once it is ``size`` (or the timeout)."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = next((d.size for d in guest.agent.block_devices() if d.serial == serial), -1)
        if seen == size:
            break
        time.sleep(0.2)
    return seen


@pytest.mark.parametrize("shape", SHAPES)
def test_the_guest_sees_the_new_size(live_guest: BootedGuest, tmp_path: Path, shape: str) -> None:
    serial = f"hl-rs-{shape[:10]}"
    disk = make_disk(tmp_path, shape, "vdb", "virtio", address=f"<serial>{serial}</serial>")
    qmp = f"unix:{live_guest.qmp_paths[0]}"
    state = tmp_path / "state"
    agent = live_guest.agent
    with Monitor(live_guest.qmp_paths[1]) as oracle:
        before = oracle.snapshot()
        attached = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state)
        assert attached.returncode == 0, attached.stderr
        dev = agent.wait_for_device(serial, timeout=15)
        assert dev.size == MIB

        grown = run_cli("resize", qmp, "vdb", "4M", "--state-dir", state, "--json")
        assert grown.returncode == 0, grown.stderr
        assert json.loads(grown.stdout)["new_size"] == 4 * MIB
        assert wait_for_size(live_guest, serial, 4 * MIB) == 4 * MIB  # /sys/block/vdX/size, via ls-block

        fresh = os.urandom(4096)
        agent.write(dev.name, 3 * MIB, fresh)  # past the old end
        agent.sync()
        assert agent.read(dev.name, 3 * MIB, len(fresh)) == fresh
        # the grown space is not zeroed plaintext: under a LUKS node it is the decryption of whatever the
        # payload grew with (as after `cryptsetup resize`); only qcow2-native reads unallocated clusters as 0
        if shape == "qcow2-native":
            assert agent.read(dev.name, 2 * MIB, 512) == bytes(512)

        shrink = run_cli("resize", qmp, "vdb", "2M", "--state-dir", state)
        assert shrink.returncode == 2 and "without --force" in shrink.stderr
        assert wait_for_size(live_guest, serial, 4 * MIB, timeout=1) == 4 * MIB

        detached = run_cli("detach", qmp, "--target", "vdb", "--state-dir", state, "--timeout", "15")
        assert detached.returncode == 0, detached.stderr
        agent.wait_device_gone(serial, timeout=10)
        assert oracle.snapshot() == before
    if shape == "detached-header-raw":  # the new space is encrypted like the rest, under the same header
        from hotluks import luks

        assert disk.payload is not None and disk.payload.stat().st_size == 4 * MIB
        out = io.BytesIO()
        luks.decrypt_payload(disk.payload, out, disk.passphrase, header=disk.header)
        assert out.getvalue()[3 * MIB:3 * MIB + len(fresh)] == fresh
        assert fresh not in disk.payload.read_bytes()
    assert not leaks(PASSPHRASE, [attached.stdout, attached.stderr, grown.stdout, grown.stderr])


def test_scsi_disk_grows_in_the_guest(live_guest: BootedGuest, tmp_path: Path) -> None:
    """virtio-scsi: QEMU's scsi-hd takes the new size, and the guest's sd driver learns it too."""
    disk = make_disk(tmp_path, "detached-header-raw", "sdb", "scsi", address="<serial>hl-rs-scsi</serial>")
    qmp = f"unix:{live_guest.qmp_paths[0]}"
    state = tmp_path / "state"
    attached = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state, "--json")
    assert attached.returncode == 0, attached.stderr
    try:
        live_guest.agent.wait_for_device("hl-rs-scsi", timeout=15)
        grown = run_cli("resize", qmp, "sdb", "+1M", "--state-dir", state, "--json")
        assert grown.returncode == 0, grown.stderr
        with Monitor(live_guest.qmp_paths[1]) as oracle:
            top = json.loads(attached.stdout)["top_node"]
            sizes = {n["node-name"]: n["image"]["virtual-size"] for n in oracle.cmd("query-named-block-nodes")}
            assert sizes[top] == 2 * MIB
        assert wait_for_size(live_guest, "hl-rs-scsi", 2 * MIB) == 2 * MIB
    finally:
        assert run_cli("detach", qmp, "--target", "sdb", "--state-dir", state, "--timeout", "15").returncode == 0
