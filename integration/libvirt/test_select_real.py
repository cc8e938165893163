"""open_backend against real targets: a QMP socket of a plain QEMU and a libvirt domain."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from hotluks.backends.select import open_backend
from hotluks.demo.qemu.launcher import start_qemu
from testsupport.libvirtd import TransientDomain

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
    assert kind == "libvirt" and key == domain.uuid and status["running"] is False


@pytest.mark.libvirt
@pytest.mark.qemu
def test_without_libvirt_python_a_domain_opens_through_virsh(domain: TransientDomain) -> None:
    """In a process where ``import libvirt`` fails, open_backend falls back to virsh and works."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.modules["libvirt"] = None  # import libvirt now raises ImportError
        sys.modules["libvirt_qemu"] = None
        from hotluks.backends.select import open_backend

        async def main():
            async with await open_backend({domain.name!r}, uri={domain.uri!r}) as backend:
                status = await backend.execute("query-status")
                print(backend.name, status["status"], backend.master_key is not None)

        asyncio.run(main())
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["virsh", "prelaunch", "True"]
