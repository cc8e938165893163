"""Under libvirt, hotluks hands QEMU open descriptors, but only of files QEMU's own user may open.

The domain's QEMU runs as libvirt-qemu in a private /dev: a block device is unreachable by
path (shown), yet attaches through a descriptor once QEMU's user may open it (as libvirt's
DAC driver arranges for its own disks). A root-only file is refused before anything is
sent: hotluks never opens files on QEMU's behalf (no confused deputy). Every fdset hotluks
adds is gone after detach, and after a rollback.
"""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import QMPCommandError
from hotluks.backends.select import open_backend
from hotluks.errors import RefusedError, RolledBackError
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.libvirtd import TransientDomain, give_to_qemu, qemu_accessible_dir
from testsupport.vms import PATTERN, backend_snapshot, make_disk

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]


async def _tagged_fdsets(backend: Any) -> list[int]:
    return [s["fdset-id"] for s in await backend.execute("query-fdsets")
            if any(str(f.get("opaque", "")).startswith("hotluks:") for f in s.get("fds", []))]


@pytest.fixture
def private_dir(tmp_path: Path) -> Path:
    """Root-only: libvirt-qemu cannot even traverse it."""
    path = tmp_path / "root-only"
    path.mkdir(mode=0o700)
    return path


def test_root_only_files_are_refused_before_anything_is_sent(domain: TransientDomain, backend_name: str,
                                                             private_dir: Path, arun: Run) -> None:
    """The confused-deputy case: hotluks (root) could open them, QEMU's user could not."""
    disk = make_disk(private_dir, "detached-header-qcow2", "vdb")
    assert disk.payload is not None and disk.header is not None
    os.chmod(disk.payload, 0o600)
    os.chmod(disk.header, 0o600)

    async def main() -> None:
        async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
            with pytest.raises(QMPCommandError) as by_path:  # QEMU itself cannot open them
                await backend.execute("blockdev-add", {"driver": "file", "filename": str(disk.payload),
                                                       "node-name": "hl-probe"})
            assert "Permission denied" in by_path.value.desc or "No such file" in by_path.value.desc
            before = await backend_snapshot(backend)
            op = Operator(backend, state_dir=private_dir / "state")
            with pytest.raises(RefusedError) as info:
                await op.attach(disk.disk(), {disk.secret_key: SecretValue(disk.passphrase)},
                                path="qmp")
            assert info.value.exit_code == 2 and "QEMU's user" in str(info.value)
            assert "not searchable" in str(info.value) or str(disk.payload) in str(info.value)
            assert await _tagged_fdsets(backend) == []
            assert await backend_snapshot(backend) == before

    arun(main())


def test_files_qemu_may_open_attach_through_descriptors(domain: TransientDomain, backend_name: str,
                                                        arun: Run) -> None:
    with qemu_accessible_dir() as work:
        disk = make_disk(work, "detached-header-qcow2", "vdb")
        assert disk.payload is not None and disk.header is not None
        for path in (disk.payload, disk.header):
            give_to_qemu(path)
            os.chmod(path, 0o600)

        async def main() -> None:
            async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
                before = await backend_snapshot(backend)
                op = Operator(backend, state_dir=work / "state")
                result = await op.attach(disk.disk(), {disk.secret_key: SecretValue(disk.passphrase)},
                                path="qmp")
                nodes = {n["node-name"]: n for n in await backend.execute("query-named-block-nodes",
                                                                          {"flat": True})}
                assert nodes["hl-vdb-proto"]["file"].startswith("/dev/fdset/")
                assert nodes["hl-vdb-hdr-proto"]["file"].startswith("/dev/fdset/")
                assert len(await _tagged_fdsets(backend)) == 3  # payload, header, the migration guard's image
                mark = await backend.execute(
                    "human-monitor-command",
                    {"command-line": f'qemu-io {result.top_node} "read -P {PATTERN:#x} 0 4k"'})
                assert "Pattern verification failed" not in str(mark)
                await op.detach("vdb", timeout=15)
                assert await _tagged_fdsets(backend) == []
                assert await backend_snapshot(backend) == before

        arun(main())


def test_block_devices_attach_through_descriptors(domain: TransientDomain, private_dir: Path, arun: Run) -> None:
    """type='block' payload and header (loop devices): invisible by path to libvirt's QEMU."""
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    disk = make_disk(private_dir, "detached-header-raw", "vdc")
    assert disk.payload is not None and disk.header is not None
    loops = []
    try:
        for image in (disk.payload, disk.header):
            made = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"no loop devices here: {made.stderr.strip()}")
            loops.append(made.stdout.strip())
            give_to_qemu(Path(loops[-1]))  # as libvirt's DAC driver does for the block devices it knows
        xml = disk.xml.replace("type='file' device='disk'", "type='block' device='disk'")
        # O_DIRECT, as cache='none' opens it: the descriptor must match for QEMU's fdset lookup
        xml = xml.replace("<driver name='qemu' type='raw'/>", "<driver name='qemu' type='raw' cache='none' io='native'/>")
        xml = xml.replace(f"<source file='{disk.payload}'/>", f"<source dev='{loops[0]}'/>")
        xml = xml.replace(f"<header type='file'><source file='{disk.header}'/>",
                          f"<header type='block'><source dev='{loops[1]}'/>")
        assert xml.count("/dev/loop") == 2 and "cache='none'" in xml, xml

        async def main() -> None:
            from hotluks.model import Disk

            async with await open_backend(domain.name, uri=domain.uri, backend="libvirt") as backend:
                before = await backend_snapshot(backend)
                op = Operator(backend, state_dir=private_dir / "state")
                await op.attach(Disk.from_xml(xml), {disk.secret_key: SecretValue(disk.passphrase)},
                                path="qmp")
                nodes = {n["node-name"]: n for n in await backend.execute("query-named-block-nodes",
                                                                          {"flat": True})}
                assert nodes["hl-vdc-proto"]["drv"] == "host_device"
                assert nodes["hl-vdc-proto"]["cache"]["direct"] is True
                await op.detach("vdc", timeout=15)
                assert await _tagged_fdsets(backend) == []
                assert await backend_snapshot(backend) == before

        arun(main())
    finally:
        for loop in loops:
            subprocess.run(["losetup", "--detach", loop], check=False)
            os.chown(loop, 0, grp.getgrnam("disk").gr_gid)  # the node outlives the test: back to root:disk


def test_rollback_removes_the_descriptors_it_passed(domain: TransientDomain, arun: Run) -> None:
    """A wrong passphrase past preflight fails at the luks node: both fdsets go with the rollback."""
    with qemu_accessible_dir() as work:
        disk = make_disk(work, "detached-header-raw", "vdd")
        for path in disk.files:
            give_to_qemu(path)

        async def main() -> None:
            async with await open_backend(domain.name, uri=domain.uri, backend="libvirt") as backend:
                before = await backend_snapshot(backend)
                op = Operator(backend, state_dir=work / "state")
                with pytest.raises(RolledBackError) as info:
                    await op.attach(disk.disk(), {disk.secret_key: SecretValue(b"wrong passphrase")},
                                    preflight=False, path="qmp")
                assert "remove-fd" in str(info.value)
                assert await _tagged_fdsets(backend) == []
                assert await backend_snapshot(backend) == before

        arun(main())


@pytest.fixture(autouse=True)
def _no_loop_leftovers() -> Iterator[None]:
    yield
    out = subprocess.run(["losetup", "--list", "--noheadings", "-O", "NAME,BACK-FILE"], capture_output=True,
                         text=True).stdout
    assert "root-only" not in out, out
