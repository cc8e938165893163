"""The migration guard's names, and that attaching to a bare QMP VM never adds one."""

from __future__ import annotations

import asyncio
from typing import Any

from hotluks.backends.base import MonitorBackend, QMPArgs
from hotluks.lifecycle.guard import guard_after_attach, guard_node, guarded_targets


def test_guard_names_stay_off_hotluks_and_libvirt_names() -> None:
    assert guard_node("vdb") == "hlg-vdb"
    assert not guard_node("vdb").startswith(("hl-", "libvirt-"))
    assert len(guard_node("x" * 64)) == 31
    assert guarded_targets(["hl-vdb-luks", "hlg-vdb", "libvirt-1-format", "hlg-sdc"]) == {"vdb", "sdc"}


class Recorder(MonitorBackend):
    name = "qmp"
    vm = "/run/vm.qmp"

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        self.sent.append(command)
        return []


def test_no_guard_for_a_bare_qmp_vm() -> None:
    """A bare QEMU has no libvirt lifecycle; its owner may migrate it (see the QEMU-level migration test)."""
    backend = Recorder()
    assert asyncio.run(guard_after_attach(backend, "vdb")) is False
    assert backend.sent == []
