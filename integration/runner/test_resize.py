"""``resize`` against a real (guest-less) QEMU: every attached shape grows, the payload under a
detached header grows with its LUKS node, shrinking needs --force, unknown targets are NotAttached,
and the CLI's --json documents (errors included) validate against resize.json."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

import hotluks
from hotluks.cli.output import envelope
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import InputError, NotAttached, RefusedError
from testsupport.schemas import validate
from testsupport.vms import SHAPES, Monitor, Snapshot, TestDisk, make_disk, qemu_io_read, run_cli, target_for

pytestmark = pytest.mark.qemu

MIB = 1 << 20


def node_size(monitor: Monitor, node: str) -> int:
    return next(int(n["image"]["virtual-size"]) for n in monitor.cmd("query-named-block-nodes", {"flat": True})
                if n["node-name"] == node)


def image_virtual_size(path: Path) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(json.loads(out)["virtual-size"])


def payload_grew(monitor: Monitor, disk: TestDisk, new: int, header_size: int) -> None:
    """What QEMU did to the nodes and files below the top node."""
    assert disk.payload is not None
    if disk.header is not None:  # the payload's format node grew with the luks node; the header did not
        assert node_size(monitor, f"hl-{disk.target}-fmt") == new
        assert node_size(monitor, f"hl-{disk.target}-hdr-fmt") == disk.header.stat().st_size == header_size
    if disk.shape == "detached-header-raw":  # LUKS payload offset 0: the file is exactly the new size
        assert disk.payload.stat().st_size == new
    elif disk.shape == "detached-header-qcow2":  # the qcow2 format node under the luks node grew
        assert image_virtual_size(disk.payload) == new
    elif disk.shape == "attached-luks":  # header area (2 MiB LUKS1) + data
        assert disk.payload.stat().st_size == 2 * MIB + new
    else:  # qcow2-native: the guest-visible size of the encrypted qcow2
        assert image_virtual_size(disk.payload) == new


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_every_shape_grows_through_the_api(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                           state_dir: Path, bus: str) -> None:
    disks = [make_disk(tmp_path / "disks", shape, target_for(bus, i), bus) for i, shape in enumerate(SHAPES)]
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        for disk in disks:
            header_size = disk.header.stat().st_size if disk.header else 0
            top = session.attach(disk.disk(), disk.secrets()).top_node
            assert node_size(monitor, top) == MIB
            grown = session.resize(disk.target, "3M")
            assert (grown.node, grown.old_size, grown.new_size, grown.changed) == (top, MIB, 3 * MIB, True)
            assert node_size(monitor, top) == 3 * MIB
            payload_grew(monitor, disk, 3 * MIB, header_size)
            assert qemu_io_read(monitor, vm, top) == "ok"  # the old plaintext still decrypts
            relative = session.resize(disk.disk(), "+512K")  # a Disk works as well as its target
            assert relative.new_size == node_size(monitor, top) == 3 * MIB + 512 * 1024
            same = session.resize(disk.target, 3 * MIB + 512 * 1024)
            assert not same.changed and same.seconds == 0
            validate("resize", envelope("resize", same.to_json()))
        for disk in disks:
            session.detach(disk.target, timeout=10)
    assert monitor.snapshot() == initial


def test_shrink_is_refused_without_force(vm: QemuProcess, monitor: Monitor, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-raw", "vdb", payload_mb=2)
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        top = session.attach(disk.disk(), disk.secrets()).top_node
        with pytest.raises(RefusedError, match="without --force") as refused:
            session.resize("vdb", "1M")
        assert refused.value.exit_code == 2
        with pytest.raises(RefusedError, match="without --force"):
            session.resize("vdb", "-4K")
        assert node_size(monitor, top) == 2 * MIB and disk.payload is not None
        assert disk.payload.stat().st_size == 2 * MIB
        shrunk = session.resize("vdb", "1M", force=True)
        assert (shrunk.old_size, shrunk.new_size) == (2 * MIB, MIB) == (2 * MIB, node_size(monitor, top))
        assert disk.payload.stat().st_size == MIB
        assert qemu_io_read(monitor, vm, top) == "ok"
        with pytest.raises(InputError, match="multiple of 512"):
            session.resize("vdb", 2 * MIB + 1)
        with pytest.raises(InputError, match="invalid size"):
            session.resize("vdb", "2X")
        with pytest.raises(NotAttached, match="vdz"):
            session.resize("vdz", "2M")
        session.detach("vdb", timeout=10)
        with pytest.raises(NotAttached):  # detached: no record any more
            session.resize("vdb", "2M")


def test_cli_resize_json_and_errors(vm: QemuProcess, monitor: Monitor, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    qmp = f"unix:{vm.qmp_path}"
    attached = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, "--json")
    assert attached.returncode == 0, attached.stderr
    top = json.loads(attached.stdout)["top_node"]

    grown = run_cli("resize", qmp, "vdb", "2G", "--state-dir", state_dir, "--json")
    assert grown.returncode == 0, grown.stderr
    doc = json.loads(grown.stdout)
    validate("resize", doc)
    assert (doc["command"], doc["node"], doc["old_size"], doc["new_size"]) == ("resize", top, MIB, 2 << 30)
    assert node_size(monitor, top) == 2 << 30 and disk.payload is not None
    assert image_virtual_size(disk.payload) == 2 << 30

    human = run_cli("resize", qmp, "vdb", "1G", "--state-dir", state_dir)
    assert human.returncode == 2 and "without --force" in human.stderr and human.stdout == ""
    for argv, code, kind in ((["vdb", "1G"], 2, "RefusedError"), (["vdz", "4G"], 2, "NotAttached"),
                             (["vdb", "lots"], 2, "InputError")):
        proc = run_cli("resize", qmp, *argv, "--state-dir", state_dir, "--json")
        err = json.loads(proc.stdout)
        validate("resize", err)
        assert (proc.returncode, err["ok"], err["error"]["type"], err["error"]["exit_code"]) == (code, False, kind, code)
        assert proc.stderr.startswith("hotluks: error: ")
    assert node_size(monitor, top) == 2 << 30
    assert run_cli("detach", qmp, "--target", "vdb", "--state-dir", state_dir).returncode == 0


def test_a_qemu_refusal_is_exit_1_and_leaves_the_size(vm: QemuProcess, monitor: Monitor, tmp_path: Path,
                                                     state_dir: Path) -> None:
    """A read-only disk: QEMU refuses block_resize; the disk keeps its size (exit 1, as a rollback)."""
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    disk.xml_path.write_text(disk.xml.replace("<target ", "<readonly/>\n  <target "))
    qmp = f"unix:{vm.qmp_path}"
    attached = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, "--json")
    assert attached.returncode == 0, attached.stderr
    top = json.loads(attached.stdout)["top_node"]
    proc = run_cli("resize", qmp, "vdb", "2M", "--state-dir", state_dir, "--json")
    err = json.loads(proc.stdout)
    validate("resize", err)
    assert proc.returncode == 1 and err["error"]["type"] == "RolledBack", proc.stderr
    assert "the disk is unchanged" in err["error"]["message"]
    assert node_size(monitor, top) == MIB and disk.payload is not None and disk.payload.stat().st_size == MIB
    assert run_cli("detach", qmp, "--target", "vdb", "--state-dir", state_dir).returncode == 0


def test_async_session_resizes_too(vm: QemuProcess, monitor: Monitor, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "attached-luks", "vdb")

    async def run() -> int:
        async with hotluks.aconnect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
            await session.attach(disk.disk(), disk.secrets())
            result = await session.resize("vdb", "+1M")
            await session.detach("vdb", timeout=10)
            return result.new_size

    assert asyncio.run(run()) == 2 * MIB


def test_a_tuned_disk_grows_through_its_throttle_filter(vm: QemuProcess, monitor: Monitor, tmp_path: Path,
                                                         state_dir: Path) -> None:
    """<iotune>: the device sits on a throttle filter node; resizing it grows the LUKS node and payload."""
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    disk.xml_path.write_text(disk.xml.replace("<target ", "<iotune><total_bytes_sec>10485760</total_bytes_sec>"
                                                          "</iotune>\n  <target "))
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        top = session.attach(disk.disk(), disk.secrets()).top_node
        grown = session.resize("vdb", "2M")
        assert grown.node == top and top != "hl-vdb-luks"  # the filter, not the luks node
        assert node_size(monitor, top) == node_size(monitor, "hl-vdb-luks") == 2 * MIB
        assert disk.payload is not None and disk.payload.stat().st_size == 2 * MIB
        session.detach("vdb", timeout=10)
