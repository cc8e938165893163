"""Attach + detach of every locally runnable shape, on virtio-blk and virtio-scsi, through the
Operator, the Python API and the CLI, against a real (guest-less) QEMU.

Each disk's plaintext starts with 64 KiB of 0xab; QEMU must read exactly that through the
device's top node (and must *not* match another pattern: the negative control). After
detach the VM's nodes, objects and devices equal the initial snapshot.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest

import hotluks
from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import ConflictError
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.vms import (
    SHAPES,
    Monitor,
    Snapshot,
    TestDisk,
    journal_files,
    make_disk,
    qemu_io_read,
    run_cli,
    target_for,
)

pytestmark = pytest.mark.qemu


def _disks(tmp_path: Path, bus: str) -> list[TestDisk]:
    return [make_disk(tmp_path / "disks", shape, target_for(bus, i), bus) for i, shape in enumerate(SHAPES)]


def _check_attached(vm: QemuProcess, monitor: Monitor, initial: Snapshot, disk: TestDisk, top: str,
                    names: set[str]) -> None:
    snap = monitor.snapshot()
    assert disk.device in snap.devices, "device missing from qom-list /machine/peripheral"
    assert top in snap.nodes, "top node missing from query-named-block-nodes"
    assert names <= snap.names()
    # the device really sits on the node hotluks reports, and QEMU decrypts the pattern through it
    assert monitor.cmd("qom-get", {"path": f"/machine/peripheral/{disk.device}", "property": "drive"}) == top
    assert qemu_io_read(monitor, vm, top) == "ok"
    assert qemu_io_read(monitor, vm, top, pattern=0xCD) == "mismatch"  # negative control


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_operator_attach_detach_all_shapes(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                           tmp_path: Path, state_dir: Path, bus: str) -> None:
    disks = _disks(tmp_path, bus)

    async def run() -> None:
        backend = await QMPBackend(vm.qmp_path).connect()
        try:
            op = Operator(backend, state_dir=state_dir)
            for disk in disks:
                result = await op.attach(disk.disk(), {disk.secret_key: SecretValue(disk.passphrase)})
                assert result.shape == disk.shape and result.device == disk.device
                names = {s.name for s in result.steps}
                assert len(names) == len(result.steps) == (7 if disk.shape.startswith("detached") else 4)
                _check_attached(vm, monitor, initial, disk, result.top_node, names)
            status = await op.status()
            assert [(s["target"], s["status"], s["consistent"]) for s in status] == sorted(
                (d.target, "attached", True) for d in disks)
            again = await op.attach(disks[0].disk(), {disks[0].secret_key: SecretValue(disks[0].passphrase)})
            assert again.already_attached and again.device == disks[0].device  # idempotent
            with pytest.raises(ConflictError, match="another disk"):  # another disk on that target
                await op.attach(dataclasses.replace(disks[1].disk(), target_dev=disks[0].target),
                                {disks[1].secret_key: SecretValue(disks[1].passphrase)})
            for disk in disks:
                removed = await op.detach(disk.target, timeout=10)
                assert removed.removed[0] == f"device_del {disk.device}"
            assert await op.status() == []
            assert (await op.detach(disks[0].target)).already_absent  # idempotent
        finally:
            await backend.close()

    asyncio.run(run())
    assert monitor.snapshot() == initial


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_api_attach_detach_all_shapes(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                      tmp_path: Path, state_dir: Path, bus: str) -> None:
    disks = _disks(tmp_path, bus)
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        for disk in disks:
            result = session.attach(disk.xml_path, secrets=disk.secrets())
            _check_attached(vm, monitor, initial, disk, result.top_node, {s.name for s in result.steps})
        assert all(s["consistent"] for s in session.status())
        for disk in disks:
            session.detach(disk.disk())
        assert session.status() == []
    assert monitor.snapshot() == initial


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_cli_attach_status_detach_all_shapes(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                             tmp_path: Path, state_dir: Path, bus: str) -> None:
    disks = _disks(tmp_path, bus)
    common = ["--state-dir", state_dir]
    for disk in disks:
        proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), *common, "--json")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["ok"] and doc["device"] == disk.device
        _check_attached(vm, monitor, initial, disk, doc["top_node"], {s["name"] for s in doc["steps"]})
    proc = run_cli("status", f"unix:{vm.qmp_path}", *common, "--json")
    assert proc.returncode == 0, proc.stderr
    assert sorted((d["target"], d["consistent"]) for d in json.loads(proc.stdout)["disks"]) == sorted(
        (d.target, True) for d in disks)
    again = run_cli("attach", vm.qmp_path, disks[0].xml_path, *disks[0].cli_secret(), *common)
    assert again.returncode == 0 and "already attached" in again.stdout, again.stderr  # idempotent
    for i, disk in enumerate(disks):
        how = ["--target", disk.target] if i % 2 else [str(disk.xml_path)]
        proc = run_cli("detach", vm.qmp_path, *how, *common, "--timeout", "10")
        assert proc.returncode == 0, proc.stderr
        assert f"detached {disk.target}" in proc.stdout
    assert monitor.snapshot() == initial
    proc = run_cli("status", vm.qmp_path, *common)
    assert proc.returncode == 0 and "no hotluks-managed disks" in proc.stdout


def test_cli_dry_run_sends_nothing(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                   state_dir: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir,
                   "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] and [c["execute"] for c in doc["commands"]] == ["object-add"] + ["blockdev-add"] * 5 + [
        "device_add"]
    assert doc["commands"][-1]["arguments"]["bus"] == "rp4"  # the last free root port (libvirt takes the first)
    assert monitor.snapshot() == initial
    assert not journal_files(state_dir)


def test_one_vm_identity_for_every_spelling_of_its_socket(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                          tmp_path: Path, state_dir: Path) -> None:
    """unix:relative, a symlink and the absolute path name the same VM: one journal, one lock."""
    disk = make_disk(tmp_path, "attached-luks", "vdb")
    link = tmp_path / "vm1.qmp"
    link.symlink_to(vm.qmp_path)
    proc = run_cli("attach", "unix:qmp.sock", disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir,
                   cwd=vm.workdir)
    assert proc.returncode == 0, proc.stderr
    status = run_cli("status", link, "--state-dir", state_dir, "--json")
    assert [d["target"] for d in json.loads(status.stdout)["disks"]] == ["vdb"]
    proc = run_cli("detach", f"unix:{vm.qmp_path}", "--target", "vdb", "--state-dir", state_dir)
    assert proc.returncode == 0, proc.stderr
    assert monitor.snapshot() == initial
    assert len([p for p in state_dir.iterdir() if p.name != "capabilities"]) == 1  # one VM directory
