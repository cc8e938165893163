"""Python API for cloud agents: sync and asyncio sessions on one VM.

    import hotluks
    disk = hotluks.Disk.from_xml("disk.xml")
    with hotluks.connect("unix:/run/vm1.qmp") as vm:
        vm.attach(disk, secrets={"0a81f5b2-…": b"passphrase"})
        print(vm.status())
        vm.detach("vdb")

    async with hotluks.aconnect("vm1", uri="qemu:///system") as vm:
        await vm.attach(disk)

Each session holds one monitor connection. Many async sessions (one per VM)
can run concurrently on one event loop; operations on the same VM are
serialized by a per-VM lock shared with other hotluks processes. Errors are
the typed exceptions of :mod:`hotluks.errors` (``exit_code`` tells the class).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from hotluks.backends.base import MasterKey, MonitorBackend
from hotluks.lifecycle.guard import LIBVIRT_BACKENDS, guard_after_attach, remove_guard
from hotluks.model import Disk
from hotluks.runner.operator import AttachResult, DetachResult, Operator
from hotluks.secrets import SecretValue

SecretsArg = Mapping[str, bytes | str | SecretValue] | None


def _secret_values(secrets: SecretsArg) -> dict[str, SecretValue]:
    out = {}
    for key, value in (secrets or {}).items():
        if isinstance(value, SecretValue):
            out[key] = value
        else:
            out[key] = SecretValue(value.encode() if isinstance(value, str) else bytes(value))
    return out


def _master(master_key: bytes | MasterKey | None, keyid: str = "masterKey0") -> MasterKey | None:
    if master_key is None or isinstance(master_key, MasterKey):
        return master_key
    return MasterKey(keyid, bytes(master_key))


async def open_vm_backend(vm: str, *, uri: str | None = None, backend: str | None = None,
                          master_key: MasterKey | None = None, timeout: float = 10.0) -> MonitorBackend:
    """Connect to ``vm``: a QMP socket (``unix:/path`` or a socket file) or a libvirt domain."""
    from hotluks.backends.select import open_backend

    return await open_backend(vm, uri=uri, backend=backend, master_key=master_key, timeout=timeout)


class AsyncSession:
    """asyncio session on one VM."""

    def __init__(self, backend: MonitorBackend, operator: Operator):
        self.backend = backend
        self.operator = operator

    async def attach(self, disk: Disk | str | Path, secrets: SecretsArg = None, preflight: bool = True,
                     dry_run: bool = False, timeout: float = 30.0) -> AttachResult:
        disk = disk if isinstance(disk, Disk) else Disk.from_xml(disk)
        result = await self.operator.attach(disk, _secret_values(secrets), preflight=preflight, dry_run=dry_run,
                                            timeout=timeout)
        if not result.dry_run:
            await guard_after_attach(self.backend, disk.target_dev)
        return result

    async def detach(self, disk_or_target: Disk | str, timeout: float = 30.0) -> DetachResult:
        target = disk_or_target.target_dev if isinstance(disk_or_target, Disk) else disk_or_target
        guarded = self.backend.name in LIBVIRT_BACKENDS and await remove_guard(self.backend, target)
        try:
            return await self.operator.detach(disk_or_target, timeout=timeout)
        except BaseException:
            if guarded:  # the disk may still be plugged: keep libvirt's lifecycle operations refused
                await asyncio.shield(guard_after_attach(self.backend, target))
            raise

    async def status(self) -> list[dict[str, Any]]:
        return await self.operator.status()

    async def repair(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        return await self.operator.repair(timeout=timeout)

    async def close(self) -> None:
        await self.backend.close()

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class _AsyncConnect:
    """``await aconnect(...)`` or ``async with aconnect(...) as vm``."""

    def __init__(self, kwargs: dict[str, Any]):
        self.kwargs = kwargs
        self.session: AsyncSession | None = None

    async def _open(self) -> AsyncSession:
        kw = self.kwargs
        master = _master(kw["master_key"], kw["master_key_id"])
        backend = await open_vm_backend(kw["vm"], uri=kw["uri"], backend=kw["backend"], master_key=master,
                                        timeout=kw["timeout"])
        operator = Operator(backend, state_dir=kw["state_dir"], master_key=master)
        return AsyncSession(backend, operator)

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self.session = await self._open()
        return self.session

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()


def aconnect(vm: str, *, uri: str | None = None, state_dir: str | Path | None = None,
             master_key: bytes | MasterKey | None = None, master_key_id: str = "masterKey0",
             backend: str | None = None, timeout: float = 10.0) -> _AsyncConnect:
    """Open an :class:`AsyncSession` on ``vm`` (await it, or use ``async with``)."""
    return _AsyncConnect({"vm": vm, "uri": uri, "state_dir": Path(state_dir) if state_dir else None,
                          "master_key": master_key, "master_key_id": master_key_id, "backend": backend,
                          "timeout": timeout})


class Session:
    """Blocking session on one VM (runs its own private event loop)."""

    def __init__(self, connector: _AsyncConnect):
        self._loop = asyncio.new_event_loop()
        try:
            self._session = self._loop.run_until_complete(connector._open())
        except BaseException:
            self._loop.close()
            raise

    @property
    def backend_name(self) -> str:
        """``qmp``, ``libvirt`` or ``virsh``."""
        return self._session.backend.name

    @property
    def seals_secrets(self) -> bool:
        """True when secrets reach QEMU only as ciphertext under a master key it holds."""
        return self._session.operator.master_key is not None or self._session.backend.master_key is not None

    def attach(self, disk: Disk | str | Path, secrets: SecretsArg = None, preflight: bool = True,
               dry_run: bool = False, timeout: float = 30.0) -> AttachResult:
        return self._loop.run_until_complete(self._session.attach(disk, secrets, preflight, dry_run, timeout))

    def detach(self, disk_or_target: Disk | str, timeout: float = 30.0) -> DetachResult:
        return self._loop.run_until_complete(self._session.detach(disk_or_target, timeout))

    def status(self) -> list[dict[str, Any]]:
        return self._loop.run_until_complete(self._session.status())

    def repair(self, timeout: float = 30.0) -> list[dict[str, Any]]:
        return self._loop.run_until_complete(self._session.repair(timeout))

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._session.close())
            self._loop.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(vm: str, *, uri: str | None = None, state_dir: str | Path | None = None,
            master_key: bytes | MasterKey | None = None, master_key_id: str = "masterKey0",
            backend: str | None = None, timeout: float = 10.0) -> Session:
    """Open a blocking :class:`Session` on ``vm`` (a context manager)."""
    return Session(aconnect(vm, uri=uri, state_dir=state_dir, master_key=master_key, master_key_id=master_key_id,
                            backend=backend, timeout=timeout))
