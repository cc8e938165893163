"""Fixtures for the runner's integration tests: guest-less QEMU VMs, test disks, the test's own monitor."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from testsupport.vms import clear_templates

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="session", autouse=True)
def _need_qemu() -> Iterator[None]:
    for tool in ("qemu-system-x86_64", "qemu-img", "qemu-io"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/setup-system.sh)")
    yield
    clear_templates()


