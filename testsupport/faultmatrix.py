"""The runner's fault matrix: one set of cases, run on the fake QEMU (tests/) and sampled on real QEMU.

A case attaches one disk while one thing goes wrong — a mutating command fails before
or after QEMU ran it (a lost reply), an undo command fails, the task is cancelled at
one backend call, or the journal raises ``OSError`` at one write — and is summed up by
an :class:`Outcome` that holds only what both QEMUs must agree on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from hotluks.backends.base import MonitorBackend, QMPArgs, QMPCommandError, VMIdentity
from hotluks.errors import BackendError, HotluksError
from hotluks.model import Disk
from hotluks.runner import journal as journal_module
from hotluks.runner.operator import Operator
from hotluks.runner.vmstate import snapshot
from hotluks.secrets import SecretValue

MUTATING = frozenset({"object-add", "object-del", "blockdev-add", "blockdev-del", "device_add", "device_del",
                      "add-fd", "remove-fd"})
UNDO_COMMANDS = ("device_del", "blockdev-del", "object-del", "remove-fd")
Kind = Literal["fail-before", "fail-after", "undo-fails", "cancel-before", "cancel-after", "journal-oserror"]


@dataclass(frozen=True)
class Case:
    """``at``: the mutating command (fail/undo-fails), backend call (cancel) or journal write counted from 1."""

    kind: Kind
    at: int
    undo: str = ""

    def __str__(self) -> str:
        return f"{self.kind}@{self.at}" + (f":{self.undo}" if self.undo else "")


@dataclass(frozen=True)
class Outcome:
    """What a case left: exit code, record status, VM as before (after the attempt, after repair)."""

    exit_code: int
    record: str | None
    as_before: bool
    repaired: bool
    detail: str = ""

    def key(self) -> tuple[int, str | None, bool, bool]:
        return (self.exit_code, self.record, self.as_before, self.repaired)


class FaultInjector(MonitorBackend):
    """Wraps a backend and makes one :class:`Case` happen."""

    def __init__(self, inner: MonitorBackend, case: Case | None):
        super().__init__()
        self.inner = inner
        self.case = case
        self.name, self.vm, self.master_key, self.passes_fds = inner.name, inner.vm, inner.master_key, inner.passes_fds
        self.calls = 0
        self.commands: list[str] = []  # every command this wrapper was asked to send, in order
        self.mutations: list[str] = []
        self.failed = False
        #: the task a "cancel" case cancels (the caller's, as SIGINT or wait_for would); default: current
        self.target_task: asyncio.Task[Any] | None = None

    @property
    def vm_key(self) -> str:
        return self.inner.vm_key

    async def identity(self) -> VMIdentity:
        return await self.inner.identity()

    def events(self, names: Any = ()) -> Any:
        return self.inner.events(names)

    async def secret_value(self, ref: str) -> bytes | None:
        return await self.inner.secret_value(ref)

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        return await self._call(command, arguments, None)

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        return await self._call(command, arguments, fds)

    async def _forward(self, command: str, arguments: QMPArgs | None, fds: Sequence[int] | None) -> Any:
        if fds is None:
            return await self.inner.execute(command, arguments)
        return await self.inner.execute_with_fds(command, arguments, fds)

    async def _cancel_me(self) -> None:
        self.failed = True
        task = self.target_task or asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)  # CancelledError is raised here (in the caller's task), as at any await

    async def _call(self, command: str, arguments: QMPArgs | None, fds: Sequence[int] | None) -> Any:
        case = self.case
        self.calls += 1
        self.commands.append(command)
        if case is not None and case.kind.startswith("cancel") and self.calls == case.at and not self.failed:
            if case.kind == "cancel-after":
                result = await self._forward(command, arguments, fds)
                await self._cancel_me()
                return result
            await self._cancel_me()
        if command not in MUTATING:
            return await self._forward(command, arguments, fds)
        self.mutations.append(command)
        if case is None:
            return await self._forward(command, arguments, fds)
        if case.kind == "undo-fails" and self.failed and command == case.undo:
            raise QMPCommandError(command, "GenericError", f"injected undo failure of {command}")
        if case.kind in ("fail-before", "fail-after", "undo-fails") and len(self.mutations) == case.at:
            self.failed = True
            if case.kind == "fail-before":
                raise QMPCommandError(command, "GenericError", f"injected failure of {command}")
            await self._forward(command, arguments, fds)
            raise BackendError(f"{command}: the reply was lost (injected)")
        return await self._forward(command, arguments, fds)


@contextlib.contextmanager
def journal_failing_at(write: int | None, *, onwards: bool = False) -> Iterator[list[int]]:
    """Make the ``write``-th journal write (save, append, remove; counted from 1) raise ENOSPC
    (with ``onwards``, every write from then on: a disk that stays full)."""
    count = [0]
    cls = journal_module.Journal
    originals = {name: getattr(cls, name) for name in ("save", "_append", "remove")}

    def wrap(name: str) -> Any:
        real = originals[name]

        def method(self: Any, *args: Any) -> Any:
            count[0] += 1
            if write is not None and (count[0] == write or (onwards and count[0] > write)):
                raise OSError(errno.ENOSPC, "No space left on device (injected)")
            return real(self, *args)
        return method

    for name in originals:
        setattr(cls, name, wrap(name))
    try:
        yield count
    finally:
        for name, real in originals.items():
            setattr(cls, name, real)


def first_mutation(commands: list[str]) -> int:
    """The 1-based call number of the first mutating command (the phase boundary of cancellation)."""
    return next(i for i, c in enumerate(commands, start=1) if c in MUTATING)


def cases(mutations: int, calls: int, writes: int) -> list[Case]:
    """Every case for an attach that sends ``mutations`` commands in ``calls`` backend calls and
    ``writes`` journal writes."""
    out = [Case(kind, k) for k in range(1, mutations + 1) for kind in ("fail-before", "fail-after")]
    out += [Case("undo-fails", k, undo) for k in range(2, mutations + 1) for undo in UNDO_COMMANDS]
    out += [Case(kind, n) for n in range(1, calls + 1) for kind in ("cancel-before", "cancel-after")]
    out += [Case("journal-oserror", n) for n in range(1, writes + 1)]
    return out


async def names(backend: MonitorBackend) -> tuple[frozenset[str], frozenset[int]]:
    snap = await snapshot(backend)
    return snap.names, frozenset(snap.fdsets)


async def run_case(backend: MonitorBackend, disk: Disk, secrets: dict[str, SecretValue], state_dir: Path,
                   case: Case | None, *, timeout: float = 5.0) -> tuple[Outcome, FaultInjector]:
    """Attach ``disk`` under ``case``, then repair without faults; the VM must end as it started."""
    before = await names(backend)
    faulty = FaultInjector(backend, case)
    faulty.target_task = asyncio.current_task()
    op = Operator(faulty, state_dir=state_dir)
    detail = ""
    with journal_failing_at(case.at if case is not None and case.kind == "journal-oserror" else None):
        try:
            await op.attach(disk, secrets, preflight=False, timeout=timeout)
            code = 0
        except HotluksError as exc:
            code, detail = exc.exit_code, str(exc)
        except asyncio.CancelledError:
            code, detail = 2, "cancelled before the first mutation"
    task = asyncio.current_task()
    while task is not None and task.uncancel():  # the case's cancellation is over
        pass
    clean = Operator(backend, state_dir=state_dir)
    record = next(iter(await clean.status()), None)
    status = record.status if record is not None else None
    as_before = await names(backend) == before
    if code == 0:
        await clean.detach(disk.target_dev, timeout=timeout)
    else:
        await clean.repair(timeout=timeout)
    repaired = await names(backend) == before and not await clean.status()
    return Outcome(code, status, as_before, repaired, detail), faulty


async def run_detach_case(backend: MonitorBackend, disk: Disk, secrets: dict[str, SecretValue], state_dir: Path,
                          case: Case | None, *, timeout: float = 5.0) -> tuple[Outcome, FaultInjector]:
    """Attach ``disk`` cleanly, detach it under ``case``, then repair (and detach what is still attached)."""
    before = await names(backend)
    clean = Operator(backend, state_dir=state_dir)
    await clean.attach(disk, secrets, preflight=False, timeout=timeout)
    faulty = FaultInjector(backend, case)
    faulty.target_task = asyncio.current_task()
    detail = ""
    with journal_failing_at(case.at if case is not None and case.kind == "journal-oserror" else None):
        try:
            await Operator(faulty, state_dir=state_dir).detach(disk.target_dev, timeout=timeout)
            code = 0
        except HotluksError as exc:
            code, detail = exc.exit_code, str(exc)
        except asyncio.CancelledError:
            code, detail = 2, "cancelled before the detach began"
    task = asyncio.current_task()
    while task is not None and task.uncancel():
        pass
    record = next(iter(await clean.status()), None)
    status = record.status if record is not None else None
    as_before = await names(backend) == before
    await clean.repair(timeout=timeout)
    if any(s.status == "attached" for s in await clean.status()):
        await clean.detach(disk.target_dev, timeout=timeout)
    repaired = await names(backend) == before and not await clean.status()
    return Outcome(code, status, as_before, repaired, detail), faulty
