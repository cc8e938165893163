"""A live tiny Linux guest (TCG) shared by the end-to-end tests of one module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotluks.demo.guest.build import GuestArtifacts, build_guest
from hotluks.demo.guest.vm import BootedGuest, boot_guest


@pytest.fixture(scope="session")
def guest_artifacts() -> GuestArtifacts:
    return build_guest()


@pytest.fixture(scope="module")
def live_guest(guest_artifacts: GuestArtifacts) -> Iterator[BootedGuest]:
    """pc machine, virtio-scsi controller scsi0; QMP socket 0 for hotluks, 1 for the test's oracle."""
    guest = boot_guest(guest_artifacts, qmp_sockets=2)
    try:
        yield guest
    finally:
        guest.stop()
