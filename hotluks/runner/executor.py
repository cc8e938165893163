"""The imperative half of a transaction: send one step, unplug a device, undo steps, shield.

Nothing here decides; :mod:`hotluks.runner.transaction` says what to undo and what a
result means. Journal writes during an undo are best effort: an undo must go on
when the state directory is full, removed or read-only.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.errors import BackendError, RefusedError
from hotluks.log import get_logger
from hotluks.plan.steps import FdSource, Step
from hotluks.runner import transaction as tx
from hotluks.runner.journal import Journal, JournalStep, Record
from hotluks.runner.vmstate import VMSnapshot, snapshot

log = get_logger(__name__)
T = TypeVar("T")


def open_flags(source: FdSource) -> int:
    """The flags QEMU would open the node with (its fdset lookup matches access mode and O_DIRECT)."""
    flags = os.O_RDONLY if source.read_only else os.O_RDWR
    if source.direct:
        flags |= os.O_DIRECT
    return flags | os.O_CLOEXEC


async def send_step(backend: MonitorBackend, step: Step, command: dict[str, Any]) -> None:
    """Send one planned step (an ``add-fd`` carries the descriptor of its file)."""
    if step.kind == "fd":
        assert step.fd_source is not None
        fd = os.open(step.fd_source.path, open_flags(step.fd_source))  # OSError: failed before QEMU saw it
        try:
            reply = await backend.execute_with_fds(command["execute"], command["arguments"], [fd])
        finally:
            os.close(fd)
        wanted = command["arguments"]["fdset-id"]
        if isinstance(reply, dict) and reply.get("fdset-id", wanted) != wanted:  # the plan must stay the truth
            raise BackendError(f"add-fd: QEMU put the descriptor in fdset {reply.get('fdset-id')}, not {wanted}")
    else:
        await backend.execute(command["execute"], command["arguments"])


async def device_present(backend: MonitorBackend, device: str) -> bool:
    listing = await backend.execute("qom-list", {"path": "/machine/peripheral"})
    return any(e.get("name") == device for e in listing)


async def unplug(backend: MonitorBackend, device: str, timeout: float) -> None:
    """``device_del`` and wait for the guest to release the device (bounded)."""
    with backend.events(["DEVICE_DELETED"]) as events:
        try:
            await backend.execute("device_del", {"id": device})
        except QMPCommandError as exc:
            if not await device_present(backend, device):
                return
            if "already in the process of unplug" not in exc.desc:
                raise
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                event = await events.get(min(0.5, remaining))
                if event.get("data", {}).get("device") == device:
                    return
            except TimeoutError:
                if not await device_present(backend, device):
                    return
    raise tx.UnplugPendingError(
        f"the guest did not release device {device} within {timeout:g}s (no DEVICE_DELETED); nothing was "
        "deleted under it and QEMU keeps the unplug request: `hotluks repair` finishes it once the guest "
        "lets go")


def unsent(journal: Journal, exc: OSError) -> RefusedError:
    """The refusal when the journal cannot be written before the first command (exit 2)."""
    return RefusedError(f"cannot write the journal in {journal.dir}: {exc.strerror or exc}; "
                        "nothing was sent to the VM")


def save_before_sending(journal: Journal, record: Record) -> None:
    """Journal ``record`` before anything is sent for it; an unwritable journal refuses (exit 2)."""
    try:
        journal.save(record)
    except OSError as exc:
        raise unsent(journal, exc) from None


def journal_quietly(action: Callable[[], None], problems: list[str]) -> None:
    """Run a journal write; an OSError is noted, not raised (the undo goes on)."""
    try:
        action()
    except OSError as exc:
        note = f"journal not updated ({exc.strerror or exc})"
        if note not in problems:
            problems.append(note)


async def undo(backend: MonitorBackend, journal: Journal, record: Record, steps: list[JournalStep],
               timeout: float, before: VMSnapshot | None = None, live: VMSnapshot | None = None) -> tx.UndoOutcome:
    """Undo, newest first, each of ``steps`` that exists in the VM (``live``, else queried now), then
    verify against a fresh snapshot."""
    undone: list[str] = []
    failed: list[tuple[JournalStep, str]] = []
    journal_notes: list[str] = []
    pending: str | None = None
    try:
        live = live if live is not None else await snapshot(backend)
    except (BackendError, OSError) as exc:
        return tx.UndoOutcome((), (f"cannot query the VM: {tx.describe_failure(exc)}",), False, "")
    for index in tx.undo_order(steps, live):
        step = steps[index]
        command, arguments = tx.undo_command(step)
        try:
            log.debug("undo: %s %s", command, step.name)
            if step.kind == "device":
                await unplug(backend, step.name, timeout)
            elif step.kind == "libvirt-disk":
                from hotluks.runner.native_path import detach_through_libvirt

                await detach_through_libvirt(backend, arguments, timeout)
            else:
                await backend.execute(command, arguments)
        except tx.UnplugPendingError as exc:
            pending = str(exc)
            break  # nothing below a device the guest still holds may be deleted
        except Exception as exc:  # noqa: BLE001 - a failed undo is reported, the others still run
            failed.append((step, f"{command} {step.name}: {tx.describe_failure(exc)}"))
            if step.kind == "device":
                break  # the device may still hold its nodes: delete nothing under it
            continue
        undone.append(f"{command} {step.name}")
        journal_quietly(lambda: journal.mark(record, record.steps.index(step), "undone"), journal_notes)
    try:
        after = await snapshot(backend)
    except (BackendError, OSError) as exc:
        problems = [p for _, p in failed] + ([pending] if pending else [])
        return tx.UndoOutcome(tuple(undone), tuple(problems), pending is not None,
                              "" if problems else f"cannot verify ({tx.describe_failure(exc)})", tuple(journal_notes))
    problems = tx.remaining_problems(failed, after) + ([pending] if pending else [])
    return tx.UndoOutcome(tuple(undone), tuple(problems), pending is not None, tx.verify(record, after, before),
                          tuple(journal_notes))


async def snapshot_first(backend: MonitorBackend, timeout: float) -> VMSnapshot:
    """The VM before an undo changes anything: a monitor that cannot answer refuses it here (exit 2).
    Shielded like the undo it precedes: once begun, a detach finishes."""
    try:
        return await shielded(lambda: snapshot(backend), 2 * timeout + 5.0)
    except TimeoutError:
        raise BackendError(f"cannot query {backend.vm} within {2 * timeout + 5:g}s") from None


async def undo_shielded(backend: MonitorBackend, journal: Journal, record: Record, steps: list[JournalStep],
                        timeout: float, before: VMSnapshot | None = None,
                        live: VMSnapshot | None = None) -> tx.UndoOutcome:
    """:func:`undo`, shielded from cancellation and bounded (an unplug wait plus QEMU's own time)."""
    limit = 2 * timeout + 5.0
    try:
        return await shielded(lambda: undo(backend, journal, record, steps, timeout, before, live), limit)
    except TimeoutError:
        return tx.UndoOutcome((), (f"the undo did not finish within {limit:g}s",), False, "")


async def shielded(work: Callable[[], Awaitable[T]], limit: float) -> T:
    """Run ``work()`` to the end even if the caller is cancelled meanwhile (bounded by ``limit`` s)."""
    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await work()

    task = asyncio.ensure_future(bounded())
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            log.warning("interrupted while undoing: finishing the undo first")
    return task.result()
