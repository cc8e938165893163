"""Fixtures for the header-control integration tests: guest-less QEMU VMs, the test's own monitor,
and cryptsetup as the oracle."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.vms import Monitor, Snapshot, clear_templates, start_vm


@pytest.fixture(scope="session", autouse=True)
def _templates() -> Iterator[None]:
    yield
    clear_templates()


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup-system.sh)")
    return path


@pytest.fixture
def vm() -> Iterator[QemuProcess]:
    """A paused q35 VM (socket 0 for hotluks, socket 1 for the test)."""
    for tool in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        need(tool)
    proc = start_vm()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def monitor(vm: QemuProcess) -> Iterator[Monitor]:
    mon = Monitor(vm.extra_sockets[0])
    try:
        yield mon
    finally:
        mon.close()


@pytest.fixture
def initial(monitor: Monitor) -> Snapshot:
    return monitor.snapshot()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture(scope="session")
def cryptsetup() -> str:
    return need("cryptsetup")
