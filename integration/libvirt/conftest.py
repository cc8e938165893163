"""Fixtures: one real libvirtd per session, a paused transient domain per test."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest

from testsupport.libvirtd import TransientDomain, start_domain
from testsupport.libvirtd import libvirt_daemon as libvirt_daemon  # the shared fixtures
from testsupport.libvirtd import libvirt_uri as libvirt_uri

T = TypeVar("T")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the daemon life-cycle tests first: their cold-start cases need no daemon running yet."""
    items.sort(key=lambda item: 0 if item.path.name == "test_daemon.py" else 1)


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
