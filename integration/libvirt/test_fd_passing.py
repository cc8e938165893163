"""Under libvirt, hotluks hands QEMU open descriptors, so files libvirt never set up still work.

The domain's QEMU runs as libvirt-qemu in a private /dev: a root-only file or a block
device is unreachable by path (shown first), yet attaches through hotluks. Every fdset
hotluks adds is gone after detach, and after a rollback.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import QMPCommandError
from hotluks.backends.select import open_backend
from hotluks.errors import RolledBackError
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from hotluks.testing.libvirtd import TransientDomain
from hotluks.testing.vms import PATTERN, backend_snapshot, make_disk

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


def test_root_only_files_attach_through_descriptors(domain: TransientDomain, backend_name: str,
                                                    private_dir: Path, arun: Run) -> None:
    disk = make_disk(private_dir, "detached-header-qcow2", "vdb")
    assert disk.payload is not None and disk.header is not None
    os.chmod(disk.payload, 0o600)
    os.chmod(disk.header, 0o600)

    async def main() -> None:
        async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
            with pytest.raises(QMPCommandError) as by_path:  # the reason descriptors are needed
                await backend.execute("blockdev-add", {"driver": "file", "filename": str(disk.payload),
                                                       "node-name": "hl-probe"})
            assert "Permission denied" in by_path.value.desc or "No such file" in by_path.value.desc
            before = await backend_snapshot(backend)
            op = Operator(backend, state_dir=private_dir / "state")
            result = await op.attach(disk.disk(), {disk.secret_key: SecretValue(disk.passphrase)})
            nodes = {n["node-name"]: n for n in await backend.execute("query-named-block-nodes", {"flat": True})}
            assert nodes["hl-vdb-proto"]["file"].startswith("/dev/fdset/")
            assert nodes["hl-vdb-hdr-proto"]["file"].startswith("/dev/fdset/")
            assert len(await _tagged_fdsets(backend)) == 3  # payload, header, and the migration guard's image
            mark = await backend.execute("human-monitor-command",
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
                await op.attach(Disk.from_xml(xml), {disk.secret_key: SecretValue(disk.passphrase)})
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


def test_rollback_removes_the_descriptors_it_passed(domain: TransientDomain, private_dir: Path, arun: Run) -> None:
    """A wrong passphrase past preflight fails at the luks node: both fdsets go with the rollback."""
    disk = make_disk(private_dir, "detached-header-raw", "vdd")

    async def main() -> None:
        async with await open_backend(domain.name, uri=domain.uri, backend="libvirt") as backend:
            before = await backend_snapshot(backend)
            op = Operator(backend, state_dir=private_dir / "state")
            with pytest.raises(RolledBackError) as info:
                await op.attach(disk.disk(), {disk.secret_key: SecretValue(b"wrong passphrase")}, preflight=False)
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
