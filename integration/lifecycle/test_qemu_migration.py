"""QEMU-level live migration of a guest with a hot-plugged detached-header disk.

The source VM gets the disk from `hotluks attach`; the destination QEMU is started
with `-incoming` and the disk's cold-boot arguments from `hotluks cold-cmdline`
(same device id, same bus address, same node names, the secret as a file). The
guest's view of the disk after migration equals its view before, read past the
guest's page cache; afterwards nothing of the source remains: its QEMU has exited
and no other process holds the disk's files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from hotluks.guest.agent import SyncGuestAgent
from hotluks.guest.build import GuestArtifacts
from hotluks.guest.vm import PC_LAYOUT, boot_guest
from hotluks.qemu.launcher import start_qemu
from hotluks.testing.vms import PASSPHRASE, Monitor, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]

SERIAL = "hl-migrate"
WRITE_AT = 256 * 1024


def pci_slot(monitor: Monitor, device: str) -> int:
    for dev in monitor.cmd("query-pci")[0]["devices"]:
        if dev.get("qdev_id") == device:
            return int(dev["slot"])
    raise AssertionError(f"{device} is not on the root bus")


def holders(*paths: Path) -> set[int]:
    """PIDs with any of ``paths`` open."""
    wanted = {str(p) for p in paths}
    pids = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                if os.readlink(fd) in wanted:
                    pids.add(int(proc.name))
        except OSError:
            continue
    return pids


def wait_migrated(monitor: Monitor, timeout: float = 120.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = monitor.cmd("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            return dict(info)
        time.sleep(0.2)
    raise AssertionError(f"migration did not finish within {timeout}s: {monitor.cmd('query-migrate')}")


@pytest.mark.parametrize("shape", ["detached-header-qcow2"])
def test_live_migration_keeps_the_disk(guest_artifacts: GuestArtifacts, tmp_path: Path, shape: str,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    disk = make_disk(tmp_path / "disk", shape, "vdb", "virtio", payload_mb=2, address=f"<serial>{SERIAL}</serial>")
    source = boot_guest(guest_artifacts, layout=PC_LAYOUT, qmp_sockets=2)
    dest = None
    try:
        attached = run_cli("attach", source.qmp_paths[0], disk.xml_path, *disk.cli_secret(),
                           "--state-dir", tmp_path / "state", "--json")
        assert attached.returncode == 0, attached.stderr
        oracle = Monitor(source.qmp_paths[1])
        slot = pci_slot(oracle, disk.device)
        assert slot == 0x1F  # the top of pc's free range

        agent = source.agent
        dev = agent.wait_for_device(SERIAL, timeout=20)
        written = os.urandom(4096)
        agent.write(dev.name, WRITE_AT, written)
        agent.sync()
        agent.command("drop-caches")
        before = agent.sha256(dev.name)
        source.release_agent()

        # the destination: the same guest, plus the disk as cold-boot arguments at the same address
        xml = disk.xml.replace("</disk>", f"<address type='pci' domain='0' bus='0' slot='{slot:#x}' function='0'/>"
                                          "</disk>")
        cold_xml = tmp_path / "cold.xml"
        cold_xml.write_text(xml)
        cold = run_cli("cold-cmdline", cold_xml, *disk.cli_secret(), "--format", "json")
        assert cold.returncode == 0, cold.stderr
        disk_args = json.loads(cold.stdout)
        dest_dir = tmp_path / "dest"
        dest_dir.mkdir()
        spec = dataclasses.replace(source.spec, agent_socket=dest_dir / "agent.sock",
                                   console_log=dest_dir / "console.log")
        incoming = dest_dir / "migrate.sock"
        dest = start_qemu([*spec.qemu_args(), *disk_args, "-incoming", "defer"], machine="pc",
                          memory_mb=spec.memory_mb, guest=True, workdir=dest_dir)
        assert not leaks(PASSPHRASE, dest.args)
        dmon = Monitor(dest.qmp_path)
        dmon.cmd("migrate-incoming", {"uri": f"unix:{incoming}"})

        oracle.cmd("migrate", {"uri": f"unix:{incoming}"})
        info = wait_migrated(oracle)
        assert info["status"] == "completed", info
        assert oracle.cmd("query-status")["status"] == "postmigrate"

        deadline = time.monotonic() + 30
        while dmon.cmd("query-status")["status"] != "running" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert dmon.cmd("query-status")["status"] == "running"
        assert pci_slot(dmon, disk.device) == slot
        dmon.close()
        with SyncGuestAgent(spec.agent_socket) as moved:
            moved.command("drop-caches")
            assert moved.sha256(dev.name) == before
            assert moved.read(dev.name, WRITE_AT, len(written)) == written

        # the source leaves nothing behind: it exits, and only the destination holds the disk's files
        oracle.cmd("quit")
        oracle.close()
        assert source.qemu.popen is not None
        assert source.qemu.popen.wait(timeout=15) == 0
        files = [p for p in (disk.payload, disk.header) if p is not None]
        assert holders(*files) == {dest.pid}
    finally:
        if dest is not None:
            dest.stop()
        source.stop()
    out, err = capfd.readouterr()
    assert not leaks(PASSPHRASE, [out, err, attached.stdout, attached.stderr, cold.stdout])
