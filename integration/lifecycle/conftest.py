"""Fixtures: the shared real libvirtd (started by the fixture when none runs)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hotluks.guest.build import GuestArtifacts, build_guest
from hotluks.testing.libvirtd import LibvirtDaemon, start_libvirtd


@pytest.fixture(scope="session")
def libvirt_daemon() -> Iterator[LibvirtDaemon]:
    daemon = start_libvirtd()
    yield daemon
    daemon.stop()


@pytest.fixture
def libvirt_uri(libvirt_daemon: LibvirtDaemon) -> str:
    if not libvirt_daemon.alive():  # e.g. libvirtd's idle --timeout ended it
        libvirt_daemon.stop()
        restarted = start_libvirtd(libvirt_daemon.uri)
        libvirt_daemon.__dict__.update(restarted.__dict__)
    return libvirt_daemon.uri


@pytest.fixture(scope="session")
def guest_artifacts() -> GuestArtifacts:
    return build_guest()
