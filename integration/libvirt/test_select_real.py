"""open_backend against real targets: a QMP socket of a plain QEMU and a libvirt domain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hotluks.backends.select import open_backend
from hotluks.qemu.launcher import start_qemu
from hotluks.testing.libvirtd import TransientDomain

Run = Callable[..., Any]


@pytest.mark.qemu
@pytest.mark.parametrize("form", ["path", "unix:"])
def test_socket_names_open_qmp(form: str, arun: Run) -> None:
    with start_qemu() as vm:
        name = str(vm.qmp_path) if form == "path" else f"unix:{vm.qmp_path}"

        async def main() -> tuple[str, Any]:
            async with await open_backend(name) as backend:
                return backend.name, await backend.execute("query-status")

        kind, status = arun(main())
    assert kind == "qmp" and status["status"] == "prelaunch"


@pytest.mark.libvirt
@pytest.mark.qemu
def test_domain_name_opens_libvirt_by_default(domain: TransientDomain, arun: Run) -> None:
    async def main() -> tuple[str, str, Any]:
        async with await open_backend(domain.name, uri=domain.uri) as backend:
            return backend.name, backend.vm_key, await backend.execute("query-status")

    kind, key, status = arun(main())
    assert kind == "libvirt" and domain.name in key and status["running"] is False
