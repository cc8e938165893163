"""A state directory that fills up (a real ENOSPC on a small tmpfs) or is removed in the middle of an
attach: rollback on real QEMU, exit 1, with a repair hint for the stale record. (A read-only remount
is refused while hotluks holds its lock file open for writing; the fake suite covers EROFS.)"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import RolledBackError
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.faultmatrix import FaultInjector
from testsupport.vms import Monitor, Snapshot, make_disk

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs")]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "mnt"
    mount.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    with open(path / "filler", "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
        except OSError:
            pass


@pytest.mark.parametrize("damage", ["full", "removed"])
def test_state_dir_breaks_mid_attach(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                     small_fs: Path, damage: str) -> None:
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    state = small_fs / "state"

    class Breaking(FaultInjector):
        async def execute(self, command: str, arguments: Any = None) -> Any:
            if command == "blockdev-add" and not self.failed:
                self.failed = True
                if damage == "full":
                    _fill(small_fs)
                else:
                    shutil.rmtree(state)
            return await super().execute(command, arguments)

    async def go() -> str:
        real = await QMPBackend(vm.qmp_path).connect()
        try:
            with pytest.raises(RolledBackError) as info:
                await Operator(Breaking(real, None), state_dir=state).attach(
                    disk.disk(), {disk.secret_key: SecretValue(disk.passphrase)}, preflight=False)
            return str(info.value)
        finally:
            await real.close()

    message = asyncio.run(go())
    assert ("No space left on device" if damage == "full" else "No such file or directory") in message, message
    assert "the VM is as before" in message
    if damage == "full":
        assert "hotluks repair` removes the stale record" in message
    assert monitor.snapshot() == initial
