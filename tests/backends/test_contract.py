"""The backend contract is declared on the base class, and the test wrapper forwards all of it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hotluks.backends.base import MasterKey, MonitorBackend, QMPArgs, VMIdentity
from hotluks.backends.libvirt import LibvirtBackend
from hotluks.backends.qmp import QMPBackend
from hotluks.backends.virsh import VirshBackend
from testsupport.vms import FaultyBackend


def test_each_backend_declares_what_it_does() -> None:
    assert (QMPBackend.passes_fds, LibvirtBackend.passes_fds, VirshBackend.passes_fds) == (False, True, True)
    assert (QMPBackend.stores_secrets, LibvirtBackend.stores_secrets, VirshBackend.stores_secrets) == (False, True, True)
    for cls in (QMPBackend, LibvirtBackend, VirshBackend):
        for member in ("execute_with_fds", "identity", "secret_value", "can_seal"):
            assert hasattr(MonitorBackend, member) and hasattr(cls, member)
    backend = VirshBackend("vm", probe_master_key=False)
    assert not backend.can_seal
    backend.master_key = MasterKey("masterKey0", bytes(32))
    assert backend.can_seal


class Inner(MonitorBackend):
    name = "libvirt"
    vm = "dom"
    passes_fds = True
    stores_secrets = True

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[str, tuple[int, ...]]] = []

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        self.sent.append((command, ()))
        return {}

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        self.sent.append((command, tuple(fds)))
        return {"fdset-id": 7}

    async def identity(self) -> VMIdentity:
        return VMIdentity("uuid", "1-2")

    async def secret_value(self, ref: str) -> bytes | None:
        return b"v" if ref == "k" else None


def test_faulty_backend_forwards_the_contract() -> None:
    inner = Inner()
    wrapped = FaultyBackend(inner)

    async def main() -> tuple[Any, VMIdentity, bytes | None]:
        return (await wrapped.execute_with_fds("add-fd", {}, [5]), await wrapped.identity(),
                await wrapped.secret_value("k"))

    reply, identity, value = asyncio.run(main())
    assert (wrapped.passes_fds, wrapped.stores_secrets) == (True, True)
    assert (reply, identity, value) == ({"fdset-id": 7}, VMIdentity("uuid", "1-2"), b"v")
    assert inner.sent == [("add-fd", (5,))]
