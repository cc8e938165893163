"""QEMU-level live migration of a guest with a hot-plugged detached-header disk.

The source VM (pc, or q35 with root ports) gets the disk from `hotluks attach`; `hotluks
placement` reads where it sits; the destination QEMU is started with `-incoming` and the
disk's cold-boot arguments from `hotluks cold-cmdline` with those placement flags (same
device id, same bus and slot, same node names, the secret as a file). The
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

from hotluks.demo.guest.agent import SyncGuestAgent
from hotluks.demo.guest.build import GuestArtifacts
from hotluks.demo.guest.vm import PC_LAYOUT, Q35_LAYOUT, boot_guest
from hotluks.demo.qemu.launcher import start_qemu
from testsupport.schemas import validate
from testsupport.vms import PASSPHRASE, Monitor, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]

SERIAL = "hl-migrate"
WRITE_AT = 256 * 1024


def parent_bus(monitor: Monitor, device: str) -> tuple[str, int]:
    """The test's own reading of where ``device`` sits: (parent bus path, devfn)."""
    path = f"/machine/peripheral/{device}"
    return (monitor.cmd("qom-get", {"path": path, "property": "parent_bus"}),
            monitor.cmd("qom-get", {"path": path, "property": "addr"}))


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


@pytest.mark.parametrize(("machine", "expected_flags"), [
    ("pc", ["--pci-bus", "pci.0", "--pci-slot", "0x1f"]),  # the top of pc's root bus
    ("q35", ["--pci-bus", "rp4"]),  # the last free root port
])
def test_live_migration_keeps_the_disk(guest_artifacts: GuestArtifacts, tmp_path: Path, machine: str,
                                       expected_flags: list[str], capfd: pytest.CaptureFixture[str]) -> None:
    disk = make_disk(tmp_path / "disk", "detached-header-qcow2", "vdb", "virtio", payload_mb=2,
                     address=f"<serial>{SERIAL}</serial>")
    layout = PC_LAYOUT if machine == "pc" else Q35_LAYOUT
    source = boot_guest(guest_artifacts, layout=layout, qmp_sockets=2)
    dest = None
    try:
        attached = run_cli("attach", source.qmp_paths[0], disk.xml_path, *disk.cli_secret(),
                           "--state-dir", tmp_path / "state", "--json")
        assert attached.returncode == 0, attached.stderr
        oracle = Monitor(source.qmp_paths[1])
        where = parent_bus(oracle, disk.device)
        placement = run_cli("placement", source.qmp_paths[0], "--target", "vdb", "--json")
        assert placement.returncode == 0, placement.stderr
        validate("placement", json.loads(placement.stdout))
        flags = json.loads(placement.stdout)["flags"]
        assert flags == expected_flags

        agent = source.agent
        dev = agent.wait_for_device(SERIAL, timeout=20)
        written = os.urandom(4096)
        agent.write(dev.name, WRITE_AT, written)
        agent.sync()
        agent.command("drop-caches")
        before = agent.sha256(dev.name)
        source.release_agent()

        # the destination: the same guest, plus the disk as cold-boot arguments at the same place
        cold = run_cli("cold-cmdline", disk.xml_path, *disk.cli_secret(), *flags, "--format", "json")
        assert cold.returncode == 0, cold.stderr
        disk_args = json.loads(cold.stdout)
        dest_dir = tmp_path / "dest"
        dest_dir.mkdir()
        spec = dataclasses.replace(source.spec, agent_socket=dest_dir / "agent.sock",
                                   console_log=dest_dir / "console.log")
        incoming = dest_dir / "migrate.sock"
        dest = start_qemu([*spec.qemu_args(), *disk_args, "-incoming", "defer"], machine=machine,
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
        assert parent_bus(dmon, disk.device)[1] == where[1]
        assert parent_bus(dmon, disk.device)[0].rsplit("/", 1)[-1] == where[0].rsplit("/", 1)[-1]
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
