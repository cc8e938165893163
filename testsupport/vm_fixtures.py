"""pytest fixtures for a paused guest-less VM, shared by the integration conftests that import them.

``vm``: a q35 VM with free root ports and scsi0, socket 0 for hotluks and socket 1 for the
test's own :class:`~testsupport.vms.Monitor`; ``initial``: its nodes, objects and devices
before the test touches it; ``state_dir``: a journal directory of the test's own.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.vms import Monitor, Snapshot, start_vm


@pytest.fixture
def vm() -> Iterator[QemuProcess]:
    """A paused q35 VM with 4 free root ports and scsi0; socket 0 for hotluks, socket 1 for the test."""
    for tool in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup-system.sh)")
    proc = start_vm()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def monitor(vm: QemuProcess) -> Iterator[Monitor]:
    mon = Monitor(vm.extra_sockets[0], timeout=60)
    try:
        yield mon
    finally:
        mon.close()


@pytest.fixture
def initial(monitor: Monitor) -> Snapshot:
    """The VM's nodes/objects/devices before the test touches it."""
    return monitor.snapshot()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"
