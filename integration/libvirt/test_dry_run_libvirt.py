"""Under libvirt and virsh too, ``attach --dry-run`` lists, command for command, what a real attach
sends — including the ``add-fd`` steps that hand QEMU its descriptors.

A QMP proxy cannot sit between libvirt and its QEMU, so what is sent is recorded where it
leaves hotluks: every command the real backend is given (``execute`` and
``execute_with_fds``), in order, on a real domain.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from hotluks.backends.base import MonitorBackend, QMPArgs, VMIdentity
from hotluks.backends.select import open_backend
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.libvirtd import TransientDomain, give_to_qemu, qemu_accessible_dir
from testsupport.vms import SHAPES, backend_snapshot, make_disk

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]

QUERIES = ("query-", "qom-", "human-monitor-command")
SECRET_FIELDS = ("data", "format", "keyid", "iv")


class Recording(MonitorBackend):
    """The real backend, with every command it is given written down (queries left out)."""

    def __init__(self, inner: MonitorBackend):
        super().__init__()
        self.inner = inner
        self.name, self.vm, self.master_key = inner.name, inner.vm, inner.master_key
        self.passes_fds, self.stores_secrets = inner.passes_fds, inner.stores_secrets
        self.sent: list[dict[str, Any]] = []

    @property
    def vm_key(self) -> str:
        return self.inner.vm_key

    @property
    def can_seal(self) -> bool:
        return self.inner.can_seal

    async def identity(self) -> VMIdentity:
        return await self.inner.identity()

    def events(self, names: Iterable[str] = ()) -> Any:
        return self.inner.events(names)

    def _note(self, command: str, arguments: QMPArgs | None) -> None:
        if not command.startswith(QUERIES):
            self.sent.append({"execute": command, "arguments": dict(arguments or {})})

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        self._note(command, arguments)
        return await self.inner.execute(command, arguments)

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        self._note(command, arguments)
        return await self.inner.execute_with_fds(command, arguments, fds)

    async def secret_value(self, ref: str) -> bytes | None:
        return await self.inner.secret_value(ref)


def _comparable(command: dict[str, Any]) -> dict[str, Any]:
    args = dict(command.get("arguments", {}))
    if command["execute"] == "object-add":
        for key in SECRET_FIELDS:  # sealed with a fresh IV each time, and never shown by a dry run
            args.pop(key, None)
    return {"execute": command["execute"], "arguments": args}


@pytest.mark.parametrize("shape", SHAPES)
def test_dry_run_equals_what_is_sent(domain: TransientDomain, backend_name: str, shape: str, arun: Any) -> None:
    with qemu_accessible_dir() as work:
        disk = make_disk(work, shape, "vdb")
        for path in disk.files:
            give_to_qemu(path)
        secrets = {disk.secret_key: SecretValue(disk.passphrase)}

        async def main() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
            async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as inner:
                backend = Recording(inner)
                before = await backend_snapshot(inner)
                op = Operator(backend, state_dir=work / "state")
                dry = await op.attach(disk.disk(), secrets, dry_run=True, path="qmp")
                assert backend.sent == []
                await op.attach(disk.disk(), secrets, path="qmp")
                sent = list(backend.sent)
                await op.detach("vdb", timeout=15)
                assert await backend_snapshot(inner) == before
                return [_comparable(c) for c in dry.commands], [_comparable(c) for c in sent]

        planned, sent = arun(main())
    assert planned == sent
    assert any(c["execute"] == "add-fd" for c in sent)  # descriptors are part of the plan
