"""Block devices libvirt did not set up: invisible by path to the domain's QEMU, reachable by fd."""

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
from testsupport.libvirtd import TransientDomain

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    if shutil.which("losetup") is None:
        pytest.skip("losetup is not installed")
    image = tmp_path / "loop.img"
    image.write_bytes(b"\xab" * (1 << 20))
    made = subprocess.run(["losetup", "--find", "--show", str(image)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"no loop devices here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)


def test_block_device_by_fd(domain: TransientDomain, backend_name: str, loop_device: str, arun: Run) -> None:
    async def main() -> tuple[str, Any, list[str], list[str]]:
        async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
            with pytest.raises(QMPCommandError) as by_path:
                await backend.execute("blockdev-add", {"driver": "host_device", "filename": loop_device,
                                                       "node-name": "hl-blk-path"})
            fd = os.open(loop_device, os.O_RDWR)
            try:
                added = await backend.execute_with_fds("add-fd", {"fdset-id": 61}, [fd])
            finally:
                os.close(fd)
            await backend.execute("blockdev-add", {"driver": "host_device", "filename": "/dev/fdset/61",
                                                   "node-name": "hl-blk-fd"})
            nodes = [n["node-name"] for n in await backend.execute("query-named-block-nodes", {"flat": True})]
            await backend.execute("blockdev-del", {"node-name": "hl-blk-fd"})
            await backend.execute("remove-fd", {"fdset-id": 61})
            fdsets = [str(s["fdset-id"]) for s in await backend.execute("query-fdsets")]
            return by_path.value.desc, added, nodes, fdsets

    by_path, added, nodes, fdsets = arun(main())
    assert "No such file or directory" in by_path  # libvirt's private /dev for QEMU
    assert added["fdset-id"] == 61
    assert "hl-blk-fd" in nodes
    assert "61" not in fdsets
