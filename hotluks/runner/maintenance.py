"""``status`` (read-only, no lock) and ``repair`` (under the lock) of one VM's records."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from hotluks.backends.base import MonitorBackend, VMIdentity
from hotluks.errors import NotAttached, RefusedError
from hotluks.lifecycle.coverage import uncovered
from hotluks.log import get_logger
from hotluks.runner import transaction as tx
from hotluks.runner.executor import journal_quietly, undo_shielded
from hotluks.runner.journal import CorruptRecordError, Journal, Record
from hotluks.runner.lock import held_elsewhere
from hotluks.runner.results import RepairAction, StatusEntry, StatusItem
from hotluks.runner.vmstate import snapshot

log = get_logger(__name__)


def load_to_change(journal: Journal, target: str) -> Record | None:
    """The record of ``target`` for an operation that will change it (``None``: no record); a corrupt
    one is refused (exit 2) until ``repair`` quarantines it."""
    try:
        return journal.load(target)
    except CorruptRecordError as exc:
        raise RefusedError(f"{exc}; run `hotluks repair` to quarantine it") from None


def refuse_interrupted(record: Record, allowed: tuple[str, ...] = ("attached",)) -> None:
    """Exit 2 unless ``record`` is in one of the ``allowed`` states (else ``repair`` must run first)."""
    if record.status not in allowed:
        raise RefusedError(f"target {record.target} has an interrupted {record.status} operation; "
                           "run `hotluks repair` first")


class Maintenance:
    """Status and repair; mixed into :class:`hotluks.runner.operator.Operator`."""

    backend: MonitorBackend

    async def identity(self) -> VMIdentity:
        raise NotImplementedError

    async def journal(self) -> Journal:
        raise NotImplementedError

    async def _lock(self) -> Any:
        raise NotImplementedError

    @contextlib.asynccontextmanager
    async def attached(self, target: str) -> AsyncIterator[tuple[Journal, Record]]:
        """Work on the disk hotluks attached on ``target`` (``resize``, ``rotate``): under the VM's lock,
        taken as attach and detach take it (the state directory's trust rechecked), with its journal and
        its record, fully attached in this QEMU instance; else exit 2 before anything is done."""
        ident = await self.identity()
        journal = await self.journal()
        async with await self._lock():
            record = load_to_change(journal, target)
            if record is None or tx.is_lost(record, ident.instance):
                raise NotAttached(f"hotluks has no disk attached on {target} of {self.backend.vm}")
            refuse_interrupted(record)
            yield journal, record

    async def status(self) -> list[StatusEntry]:
        """hotluks-managed disks of this VM with the live presence of each item. Read-only: no lock."""
        ident = await self.identity()
        journal = await self.journal()
        entries = list(journal.entries())
        if not entries:
            return []
        live = await snapshot(self.backend)
        busy = held_elsewhere(journal.dir)  # an operation in progress: its records are not (yet) broken
        moments = await self.backend.moments()
        out = []
        for target, entry in entries:
            if isinstance(entry, CorruptRecordError):
                out.append(StatusEntry(target, "", "", "corrupt", False, True, str(entry)))
                continue
            status, consistent = tx.entry_status(entry, live, ident.instance)
            lost = status == "lost"
            items = tuple(StatusItem(s.kind, s.name, not lost and tx.present(s, live)) for s in entry.steps)
            in_progress = busy and status in ("attaching", "rolling-back", "detaching")
            # a disk libvirt plugged itself (libvirt-native) is in libvirt's snapshots and backups
            missed = uncovered(moments, target, entry.updated) if status == "attached" and entry.path == "qmp" else ()
            out.append(StatusEntry(target, entry.device, entry.shape, status, consistent,
                                   tx.needs_repair(status, consistent) and not in_progress, entry.error, items,
                                   in_progress, entry.header_fingerprint or None, missed))
        return out

    async def repair(self, *, timeout: float = 30.0) -> list[RepairAction]:
        """Finish interrupted detaches, undo interrupted attaches, quarantine corrupt records; idempotent."""
        actions: list[RepairAction] = []
        ident = await self.identity()
        journal = await self.journal()
        async with await self._lock():
            journal.remove_stale_temporaries()  # a process killed while saving a record
            for target, entry in list(journal.entries()):
                is_carried = (isinstance(entry, Record) and tx.is_lost(entry, ident.instance)
                              and tx.carried(entry, await snapshot(self.backend)))
                decision = tx.repair_step(entry, ident.instance, is_carried)
                if decision == "quarantine":
                    try:
                        aside = journal.quarantine(target)
                    except OSError as exc:
                        actions.append(RepairAction(target, "incomplete", error=f"{entry}; cannot move it aside: "
                                                    f"{exc.strerror or exc}"))
                        continue
                    log.warning("%s; moved aside to %s", entry, aside)
                    actions.append(RepairAction(target, "quarantined", error=f"{entry}; moved aside to {aside.name}"))
                    continue
                assert isinstance(entry, Record)
                if decision == "keep-lost":
                    actions.append(RepairAction(target, "lost", error="the QEMU instance this disk was attached "
                                                "to is gone: `hotluks attach` plugs it again, `detach` forgets it"))
                    continue
                if decision == "keep-attached":
                    continue
                if decision == "forget":
                    journal.remove(target)
                    actions.append(RepairAction(target, "forgotten", error=f"an interrupted {entry.status} on a "
                                                "QEMU instance that is gone: nothing of it is in this one"))
                    continue
                verb = "finished detach" if entry.status == "detaching" else "rolled back interrupted attach"
                outcome = await undo_shielded(self.backend, journal, entry, entry.steps, timeout)
                if not outcome.clean:
                    entry.status = "detaching" if entry.status == "detaching" or outcome.pending_unplug \
                        else "needs-repair"
                    entry.error = outcome.summary()
                    journal_quietly(lambda: journal.save(entry), [])
                    actions.append(RepairAction(target, "incomplete", outcome.undone, entry.error))
                    continue
                notes: list[str] = []
                journal_quietly(lambda: journal.remove(target), notes)
                actions.append(RepairAction(target, verb, outcome.undone, "; ".join(notes) or None))
        return actions
