"""Fixtures for the tiny guest: artefacts built once per run, a booted guest per module.

The logic lives in hotluks.demo.guest (build_guest, boot_guest); other test
directories reuse it the same way.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotluks.demo.guest.build import GuestArtifacts, build_guest
from hotluks.demo.guest.vm import BootedGuest, boot_guest


@pytest.fixture(scope="session")
def guest_artifacts() -> GuestArtifacts:
    """Kernel + initramfs, built (or taken from the cache) once per test run."""
    return build_guest()


@pytest.fixture(scope="module")
def guest(guest_artifacts: GuestArtifacts) -> Iterator[BootedGuest]:
    """A booted guest (default pc layout) with two QMP sockets, stopped by PID afterwards."""
    booted = boot_guest(guest_artifacts, qmp_sockets=2)
    try:
        yield booted
    finally:
        booted.stop()
