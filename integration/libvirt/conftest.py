"""Fixtures: one real libvirtd per session, a paused transient domain per test."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from testsupport.libvirtd import LibvirtDaemon, TransientDomain, start_domain, start_libvirtd

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the daemon life-cycle tests first: their cold-start cases need no daemon running yet."""
    items.sort(key=lambda item: 0 if item.path.name == "test_daemon.py" else 1)


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


@pytest.fixture
def domain(libvirt_uri: str) -> Iterator[TransientDomain]:
    with start_domain(libvirt_uri, paused=True) as dom:
        yield dom


@pytest.fixture(params=["libvirt", "virsh"])
def backend_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one coroutine on a fresh event loop with an overall time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def arun() -> Any:
    return run
