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
the typed exceptions of :mod:`hotluks.errors` (``exit_code`` tells the class);
bad arguments raise them too, never ``TypeError``/``ValueError``/``OSError``.

``connect()`` runs its own event loop: in the calling thread, or, when called
from inside a running loop (a coroutine), in a private thread — that works but
blocks the calling loop for each call; use ``aconnect()`` there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from collections.abc import Coroutine, Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from hotluks.arguments import check_seconds, check_vm
from hotluks.backends.base import MasterKey, MonitorBackend
from hotluks.errors import InputError, InvalidDisk, SecretError
from hotluks.lifecycle.guard import LIBVIRT_BACKENDS, remove_unrecorded_guard
from hotluks.model import Disk
from hotluks.runner.native_path import PathChoice
from hotluks.runner.operator import AttachResult, DetachResult, Operator, RepairAction, StatusEntry
from hotluks.secrets import SecretValue

if TYPE_CHECKING:
    from hotluks.headers.rotate import RotateResult
    from hotluks.runner.resize import ResizeResult

SecretsArg = Mapping[str, bytes | str | SecretValue] | None
T = TypeVar("T")


def _secret_values(secrets: SecretsArg) -> dict[str, SecretValue]:
    if secrets is None:
        return {}
    if not isinstance(secrets, Mapping):
        raise SecretError(f"secrets must map a secret's uuid or usage to its value, not {type(secrets).__name__}")
    out = {}
    for key, value in secrets.items():
        if not isinstance(key, str) or not key:
            raise SecretError("a secret is named by its uuid or usage (a non-empty string)")
        if isinstance(value, SecretValue):
            out[key] = value
        elif isinstance(value, str):
            try:
                out[key] = SecretValue(value.encode())
            except UnicodeEncodeError:
                raise SecretError(f"the value of secret {key!r} is not valid Unicode text; pass bytes") from None
        elif isinstance(value, bytes | bytearray | memoryview):
            out[key] = SecretValue(bytes(value))
        else:
            raise SecretError(f"the value of secret {key!r} must be bytes or str, not {type(value).__name__}")
    return out


def _master(master_key: bytes | MasterKey | None, keyid: str = "masterKey0") -> MasterKey | None:
    if master_key is None or isinstance(master_key, MasterKey):
        return master_key
    if not isinstance(master_key, bytes | bytearray | memoryview):
        raise SecretError(f"master_key must be 32 bytes or a MasterKey, not {type(master_key).__name__}")
    if not isinstance(keyid, str) or not keyid:
        raise SecretError("master_key_id must name the QEMU secret object holding the key")
    if len(master_key) != 32:
        raise SecretError(f"master_key must be 32 bytes (AES-256), got {len(master_key)}")
    return MasterKey(keyid, bytes(master_key))


def _disk(disk: object) -> Disk:
    if isinstance(disk, Disk):
        return disk
    if isinstance(disk, os.PathLike):
        return Disk.from_xml(Path(os.fsdecode(os.fspath(disk))))
    if isinstance(disk, str | bytes):
        return Disk.from_xml(disk)
    if isinstance(disk, bytearray | memoryview):
        return Disk.from_xml(bytes(disk))
    raise InvalidDisk(f"a disk is a hotluks.Disk, <disk> XML or the path of an XML file, not {type(disk).__name__}")


def _target(disk_or_target: object, verb: str = "detach") -> Disk | str:
    if isinstance(disk_or_target, Disk):
        return disk_or_target
    if isinstance(disk_or_target, str) and disk_or_target and disk_or_target.isprintable():
        return disk_or_target
    raise InputError(f"{verb} takes a Disk or a target name such as 'vdb', not {disk_or_target!r:.80}")


def _optional_text(value: object, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise InputError(f"{what} must be a string, not {type(value).__name__}")
    return value


def _state_dir(value: object, what: str = "state_dir") -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise InputError(f"{what} must be a path, not {type(value).__name__}")
    path = Path(os.fsdecode(os.fspath(value)))
    if not str(path) or "\0" in str(path):
        raise InputError(f"{what} must be a usable path")
    return path


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
                     dry_run: bool = False, timeout: float = 30.0, pin: bool = False,
                     allow_weak_header: bool = False, path: PathChoice = "auto",
                     persistent: bool = False, key_dir: str | Path | None = None,
                     qemu_user: str | None = None) -> AttachResult:
        """``path``: ``auto`` (the default: libvirt's device API where libvirt expresses the disk and
        holds its secrets, else hotluks' QMP steps), ``qmp`` or ``libvirt-native``. ``persistent``:
        also into the domain's definition (on the QMP path as ``hotluks persist``, key file in ``key_dir``)."""
        return await self.operator.attach(_disk(disk), _secret_values(secrets), preflight=bool(preflight),
                                          dry_run=bool(dry_run), timeout=check_seconds(timeout), pin=bool(pin),
                                          allow_weak_header=bool(allow_weak_header), path=path,
                                          persistent=bool(persistent), key_dir=_state_dir(key_dir, "key_dir"),
                                          qemu_user=_optional_text(qemu_user, "qemu_user"))

    async def detach(self, disk_or_target: Disk | str, timeout: float = 30.0,
                     persistent: bool = False) -> DetachResult:
        """Also takes the disk out of a libvirt domain's definition when it is there (``persistent``:
        and fail when the definition cannot be reached)."""
        import dataclasses

        from hotluks.runner.keep import forget

        what = _target(disk_or_target)
        result = await self.operator.detach(what, timeout=check_seconds(timeout))
        if self.backend.name in LIBVIRT_BACKENDS:  # a guard added outside the plan by an older hotluks
            await remove_unrecorded_guard(self.backend, result.target)
        if await forget(self.backend, result.target, result.device, required=bool(persistent)):
            result = dataclasses.replace(result, persistent=True)
        return result

    async def status(self) -> list[StatusEntry]:
        return await self.operator.status()

    async def repair(self, timeout: float = 30.0) -> list[RepairAction]:
        return await self.operator.repair(timeout=check_seconds(timeout))

    async def resize(self, disk_or_target: Disk | str, size: int | str, force: bool = False) -> ResizeResult:
        """Grow the attached disk to ``size`` (bytes, or qemu-img style ``"10G"``/``"+1G"``); shrink only
        with ``force``. Raises :class:`~hotluks.errors.NotAttached` for a target hotluks has not attached."""
        from hotluks.runner.resize import resize

        what = _target(disk_or_target, "resize")
        target = what.target_dev if isinstance(what, Disk) else what
        if isinstance(size, bool) or not isinstance(size, int | str):
            raise InputError(f"size must be a number of bytes or a string such as '10G', not {type(size).__name__}")
        return await resize(self.operator, target, size, force=bool(force))

    async def rotate(self, disk: Disk | str | Path, new_passphrase: bytes,
                     secrets: SecretsArg = None) -> RotateResult:
        """Change the passphrase of an attached disk's header file (:mod:`hotluks.headers.rotate`)."""
        from hotluks.headers.rotate import rotate

        disk = _disk(disk)
        return await rotate(self.operator, disk, new_passphrase, _secret_values(secrets),
                            disk_fingerprint=await self.operator.disk_fingerprint(disk))

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
        master = kw["master"]
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
    check_vm(vm)
    return _AsyncConnect({"vm": vm, "uri": _optional_text(uri, "uri"), "state_dir": _state_dir(state_dir),
                          "master": _master(master_key, master_key_id),
                          "backend": _optional_text(backend, "backend"), "timeout": check_seconds(timeout)})


class _LoopRunner:
    """Runs coroutines to completion on a private event loop.

    In a thread without a running loop the loop runs right there; inside a running loop
    (``asyncio.run`` cannot nest) it runs in a private daemon thread and the caller waits.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        self._thread = threading.Thread(target=self.loop.run_forever, name="hotluks-session", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._thread is None:
            return self.loop.run_until_complete(coro)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            if not future.done():  # e.g. KeyboardInterrupt in the caller: cancel, and let the operation end
                future.cancel()
                concurrent.futures.wait([future])
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()
        self.loop.close()


class Session:
    """Blocking session on one VM (runs its own private event loop, see the module doc)."""

    def __init__(self, connector: _AsyncConnect):
        self._runner = _LoopRunner()
        try:
            self._session = self._runner.run(connector._open())
        except BaseException:
            self._runner.close()
            raise

    @property
    def backend_name(self) -> str:
        """``qmp``, ``libvirt`` or ``virsh``."""
        return self._session.backend.name

    @property
    def seals_secrets(self) -> bool:
        """True when secrets reach QEMU only as ciphertext under a master key it holds."""
        return self._session.operator.master_key is not None or self._session.backend.can_seal

    def attach(self, disk: Disk | str | Path, secrets: SecretsArg = None, preflight: bool = True,
               dry_run: bool = False, timeout: float = 30.0, pin: bool = False,
               allow_weak_header: bool = False, path: PathChoice = "auto",
               persistent: bool = False, key_dir: str | Path | None = None,
               qemu_user: str | None = None) -> AttachResult:
        return self._runner.run(self._session.attach(disk, secrets, preflight, dry_run, timeout, pin,
                                                     allow_weak_header, path, persistent, key_dir, qemu_user))

    def detach(self, disk_or_target: Disk | str, timeout: float = 30.0, persistent: bool = False) -> DetachResult:
        return self._runner.run(self._session.detach(disk_or_target, timeout, persistent))

    def status(self) -> list[StatusEntry]:
        return self._runner.run(self._session.status())

    def repair(self, timeout: float = 30.0) -> list[RepairAction]:
        return self._runner.run(self._session.repair(timeout))

    def resize(self, disk_or_target: Disk | str, size: int | str, force: bool = False) -> ResizeResult:
        return self._runner.run(self._session.resize(disk_or_target, size, force))

    def rotate(self, disk: Disk | str | Path, new_passphrase: bytes, secrets: SecretsArg = None) -> RotateResult:
        return self._runner.run(self._session.rotate(disk, new_passphrase, secrets))

    def close(self) -> None:
        if not self._runner.loop.is_closed():
            try:
                self._runner.run(self._session.close())
            finally:
                self._runner.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def connect(vm: str, *, uri: str | None = None, state_dir: str | Path | None = None,
            master_key: bytes | MasterKey | None = None, master_key_id: str = "masterKey0",
            backend: str | None = None, timeout: float = 10.0) -> Session:
    """Open a blocking :class:`Session` on ``vm`` (a context manager).

    From inside a running event loop this works (on a private thread) but blocks that
    loop during each call: prefer ``await aconnect(...)`` there.
    """
    return Session(aconnect(vm, uri=uri, state_dir=state_dir, master_key=master_key, master_key_id=master_key_id,
                            backend=backend, timeout=timeout))
