"""Fixtures for the header-control integration tests: guest-less QEMU VMs, the test's own monitor,
and cryptsetup as the oracle."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from testsupport.vms import clear_templates


@pytest.fixture(scope="session", autouse=True)
def _templates() -> Iterator[None]:
    yield
    clear_templates()


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (scripts/setup-system.sh)")
    return path


@pytest.fixture(scope="session")
def cryptsetup() -> str:
    return need("cryptsetup")
