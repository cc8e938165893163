"""Attach, detach, status and repair against one VM, all or nothing.

The executor shell: it takes the VM's lock, journals and sends; every decision comes
from :mod:`hotluks.runner.transaction`. Preflight runs before the lock is taken, and
``status`` takes no lock at all. After the first mutation, any exception (a QEMU
error, an ``OSError`` from the journal, cancellation, a signal) ends in a verified
rollback (:class:`RolledBackError`, exit 1) or a recorded repair (exit 3).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hotluks.backends.base import MasterKey, MonitorBackend, VMIdentity
from hotluks.errors import HotluksError, InputError, RefusedError, RolledBackError
from hotluks.headers.pins import PinStore
from hotluks.lifecycle.guard import LIBVIRT_BACKENDS, guard_image
from hotluks.lifecycle.persist import Persisted
from hotluks.log import get_logger
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.names import guard_node
from hotluks.plan.planner import build_plan
from hotluks.plan.steps import Plan
from hotluks.render.qmp import bound_command, redacted_command
from hotluks.runner import transaction as tx
from hotluks.runner.access import check_qemu_access
from hotluks.runner.admission import admit
from hotluks.runner.executor import (
    journal_quietly,
    save_before_sending,
    send_step,
    shielded,
    snapshot_first,
    undo_shielded,
    unsent,
)
from hotluks.runner.fdplan import with_fd_passing
from hotluks.runner.guardplan import GUARD_ROLE, with_migration_guard
from hotluks.runner.journal import CorruptRecordError, Journal, Record, default_state_dir
from hotluks.runner.keep import Keep, keep_for
from hotluks.runner.lock import vm_lock
from hotluks.runner.maintenance import Maintenance, load_to_change, refuse_interrupted
from hotluks.runner.native_path import PathChoice, attach_through_libvirt, choose_path, native_disk, native_record
from hotluks.runner.results import AttachResult, DetachResult, RepairAction, StatusEntry, StepReport
from hotluks.runner.vmstate import PortMemory, VMSnapshot, machine_type, probe_capabilities, snapshot, survey
from hotluks.secrets import SecretValue, resolve

log = get_logger(__name__)

__all__ = ["Operator", "AttachResult", "DetachResult", "StatusEntry", "RepairAction", "StepReport"]


def plan_fingerprint(plan: Plan) -> str:
    """What makes two attaches "the same disk": the plan built without VM facts (no placement, no fds)."""
    doc = [[s.kind, s.command, s.arguments] for s in plan.steps]
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


class Operator(Maintenance):
    """Runs plans against the VM behind ``backend``."""

    def __init__(self, backend: MonitorBackend, *, state_dir: Path | None = None,
                 master_key: MasterKey | None = None, lock_timeout: float = 120.0):
        self.backend = backend
        self.state_dir = state_dir or default_state_dir()
        self.master_key = master_key
        self.lock_timeout = lock_timeout
        self._capabilities: Capabilities | None = None
        self._machine: str | None = None
        self._drafts: dict[Disk, tuple[Plan, str]] = {}  # pure, so planned once per disk and connection
        self._identity: VMIdentity | None = None
        self._journal: Journal | None = None
        self._ports = PortMemory()  # what surveys learnt of the root ports: saves round trips

    # -- helpers ---------------------------------------------------------------
    async def identity(self) -> VMIdentity:
        """The VM's identity (queried once per connection); the journal is keyed by it."""
        if self._identity is None:
            self._identity = await self.backend.identity()
        return self._identity

    async def journal(self) -> Journal:
        if self._journal is None:
            self._journal = Journal(self.state_dir, (await self.identity()).key)
        return self._journal

    async def _lock(self) -> Any:
        journal = await self.journal()
        journal.ensure(recheck=True)
        return vm_lock(journal.dir, self.lock_timeout)

    async def capabilities(self) -> Capabilities:
        """Probe once per connection (query-version + query-qmp-schema)."""
        if self._capabilities is None:
            self._capabilities = await probe_capabilities(self.backend, self.state_dir / "capabilities")
        return self._capabilities

    async def machine(self) -> str:
        """The VM's machine type, queried once per connection (it never changes while QEMU runs)."""
        if self._machine is None:
            self._machine = await machine_type(self.backend)
        return self._machine

    def _sealing_key(self) -> tuple[str, bytes] | None:
        key = self.master_key or self.backend.master_key
        return (key.keyid, key.key) if key is not None else None

    async def _secret_values(self, plan: Plan, given: Mapping[str, SecretValue]) -> dict[str, SecretValue]:
        return await resolve(plan.secrets, given, self.backend)

    def _draft(self, disk: Disk, caps: Capabilities) -> tuple[Plan, str]:
        if disk not in self._drafts:
            draft = build_plan(disk, caps)
            self._drafts = {disk: (draft, plan_fingerprint(draft))}  # the last disk only: bounded
        return self._drafts[disk]

    async def disk_fingerprint(self, disk: Disk) -> str:
        """What makes two attaches "the same disk" (stored in the record as ``fingerprint``)."""
        return plan_fingerprint(build_plan(disk, await self.capabilities()))

    async def _plan(self, disk: Disk, caps: Capabilities) -> tuple[Plan, VMSnapshot]:
        seen = await survey(self.backend, disk, machine=await self.machine(), memory=self._ports)
        before = seen.before
        plan = build_plan(disk, caps, seen.context)
        if self.backend.passes_fds:
            plan = with_fd_passing(plan, before.fdsets)
        if self.backend.passes_fds and self.backend.name in LIBVIRT_BACKENDS:  # libvirt's lifecycle: refused
            node = guard_node(disk.target_dev)
            if node in before.nodes:
                raise RefusedError(f"the VM already has a node {node} (a migration guard hotluks did not record); "
                                   f"remove it with blockdev-del before attaching {disk.target_dev}")
            plan = with_migration_guard(plan, str(guard_image(self.state_dir)), before.fdsets)
        return plan, before

    # -- attach ----------------------------------------------------------------
    async def attach(self, disk: Disk, secrets: Mapping[str, SecretValue] | None = None, *,
                     preflight: bool = True, dry_run: bool = False, timeout: float = 30.0,
                     pin: bool = False, allow_weak_header: bool = False, path: PathChoice = "auto",
                     persistent: bool = False, key_dir: Path | None = None,
                     qemu_user: str | None = None) -> AttachResult:
        """Attach ``disk``: refuse (exit 2), succeed, or roll back completely (exit 1) or record a repair (3).

        The LUKS preflight runs before the VM's lock is taken; ``timeout`` also bounds the
        unplug wait of a rollback. With ``pin`` the header's fingerprint is checked against the
        one recorded for its location, or recorded on this first use. ``allow_weak_header`` lets
        a header below the policy (cipher_null, ECB, a KDF under cryptsetup's minimum) through.
        ``path`` picks hotluks' QMP steps, libvirt's device API (``libvirt-native``,
        :mod:`hotluks.runner.native_path`), or the latter where it can (``auto``, the default; on
        a bare QEMU always QMP). ``persistent`` also puts the disk into the domain's definition:
        libvirt's own on the native path, else ``<qemu:commandline>`` as ``hotluks persist`` does
        (:mod:`hotluks.runner.keep`; key file under ``key_dir``), checked before anything is sent.
        """
        native, why = choose_path(self.backend, disk, secrets or {}, path)
        log.info("attaching %s through %s (%s)", disk.target_dev, "libvirt's device API" if native else "QMP", why)
        keep = keep_for(self.backend, key_dir, qemu_user) if persistent and not native else None
        ident = await self.identity()
        caps = await self.capabilities()
        draft, fingerprint = self._draft(disk, caps)  # no VM facts: which secrets, and the disk's fingerprint
        values = await self._secret_values(draft, secrets or {})
        sealing = self._sealing_key()
        if draft.secrets:
            log.info("secrets: %s", f"sealed (AES-256-CBC under master key '{sealing[0]}')" if sealing
                     else "not sealed (no master key: values travel in clear on the monitor socket)")
        pins = PinStore(self.state_dir / "pins")
        admitted = await admit(disk, values, pins, pin=pin, preflight=preflight,
                               allow_weak_header=allow_weak_header, timeout=timeout)
        note, pinned, header_fp = admitted.note, admitted.pinned, admitted.header_fingerprint
        if keep is not None:  # a refusal here changes nothing
            await keep.check(self.backend, disk, secrets or {})
        journal = await self.journal()
        async with await self._lock():
            try:
                existing: Record | CorruptRecordError | None = journal.load(disk.target_dev)
            except CorruptRecordError as exc:
                existing = exc
            live = await snapshot(self.backend) if isinstance(existing, Record) else None
            is_carried = isinstance(existing, Record) and live is not None and tx.carried(existing, live)
            start = tx.attach_start(existing, fingerprint, ident.instance, disk.target_dev, is_carried)
            if start == "already-attached":
                assert isinstance(existing, Record) and live is not None
                return await self._already_attached(existing, live, disk, secrets or {}, note, ident, keep,
                                                    persistent=persistent, dry_run=dry_run)
            if native:
                return await self._attach_native(journal, native_disk(disk), ident, fingerprint, note,
                                                 header_fp, dry_run=dry_run, timeout=timeout, persistent=persistent)
            plan, before = await self._plan(disk, caps)
            # (the migration guard's image is hotluks' own empty file, not one the user named)
            check_qemu_access([s.fd_source for s in plan.steps if s.fd_source is not None and s.role != GUARD_ROLE],
                              ident.instance)
            commands = [bound_command(step, values, sealing) for step in plan.steps]
            if dry_run:
                return AttachResult(vm=self.backend.vm, target=disk.target_dev, device=plan.device_id,
                                    top_node=plan.top_node, shape=disk.shape, preflight=note, dry_run=True,
                                    commands=tuple(redacted_command(step) for step in plan.steps),
                                    header_fingerprint=header_fp)
            record = Record.for_plan(self.backend.vm, plan, vm_key=ident.key, instance=ident.instance,
                                     fingerprint=fingerprint, header_fingerprint=header_fp or "")
            save_before_sending(journal, record)  # replaces a lost record of this target
            log.info("attaching %s to %s as %s (%s, %d steps); preflight: %s", disk.target_dev, self.backend.vm,
                     plan.device_id, disk.shape, len(plan.steps), note)
            reports = await self._run_steps(journal, record, plan, commands, before, timeout)
            kept = await self._keep(keep, journal, record, disk, secrets or {}, before, timeout) if keep else None
            if pinned is not None and pinned.first_use:
                pins.record(pinned.source, pinned.fingerprint)
            return AttachResult(vm=self.backend.vm, target=disk.target_dev, device=plan.device_id,
                                top_node=plan.top_node, shape=disk.shape, preflight=note, steps=tuple(reports),
                                header_fingerprint=header_fp, persistent=keep is not None,
                                key_file=kept.key_file if kept else None)

    async def _already_attached(self, existing: Record, live: VMSnapshot, disk: Disk,
                                secrets: Mapping[str, SecretValue], note: str, ident: VMIdentity, keep: Keep | None,
                                *, persistent: bool, dry_run: bool) -> AttachResult:
        """The same disk is attached already: report it (idempotent), or refuse when the VM lacks part of it.

        With ``persistent`` a QMP-path disk is written into the definition now; a disk libvirt
        holds for this run only cannot become persistent without a new attach (refused).
        """
        missing = tx.missing(existing, live, ident.instance)
        if missing:
            raise RefusedError(f"target {disk.target_dev} is recorded as attached but the VM lacks "
                               f"{', '.join(missing)}; `hotluks detach` it, then attach again")
        if persistent and existing.path == "libvirt-native" and not tx.native_persistent(existing):
            raise RefusedError(f"target {disk.target_dev} is attached through libvirt for this run only; "
                               "nothing changed: `hotluks detach` it, then attach again with --persistent")
        top = next((s.arguments.get("drive") for s in existing.steps if s.kind == "device"), "") or existing.device
        kept = (await keep.write(self.backend, disk, secrets)
                if keep and not dry_run and existing.path == "qmp" else None)
        return AttachResult(vm=self.backend.vm, target=disk.target_dev, device=existing.device,
                            top_node=str(top), shape=existing.shape, preflight=note, dry_run=dry_run,
                            already_attached=True, header_fingerprint=existing.header_fingerprint or None,
                            path=existing.path, persistent=kept is not None,
                            key_file=kept.key_file if kept else None)

    async def _keep(self, keep: Keep, journal: Journal, record: Record, disk: Disk,
                    secrets: Mapping[str, SecretValue], before: VMSnapshot, timeout: float) -> Persisted:
        """Write the attached disk into the definition, or roll the live attach back (exit 1 or 3)."""
        try:
            return await keep.write(self.backend, disk, secrets)
        except BaseException as exc:
            await self._roll_back(journal, record, len(record.steps) - 1, exc, before, timeout)
            raise AssertionError("unreachable") from None

    async def _attach_native(self, journal: Journal, disk: Disk, ident: VMIdentity, fingerprint: str, note: str,
                             header_fp: str | None, *, dry_run: bool, timeout: float,
                             persistent: bool) -> AttachResult:
        """One journaled ``libvirt-disk`` step through libvirt's device API (held under the VM's lock)."""
        from hotluks.lifecycle.native_xml import libvirt_disk_xml

        assert disk.alias is not None
        record = native_record(self.backend.vm, disk, libvirt_disk_xml(disk), persistent=persistent,
                               vm_key=ident.key, instance=ident.instance, fingerprint=fingerprint,
                               header_fingerprint=header_fp or "")
        step = record.steps[0]
        if dry_run:
            return AttachResult(self.backend.vm, disk.target_dev, disk.alias, disk.alias, disk.shape, note,
                                dry_run=True, commands=({"execute": step.execute, "arguments": dict(step.arguments)},),
                                header_fingerprint=header_fp, path="libvirt-native")
        before = await snapshot(self.backend)
        save_before_sending(journal, record)
        log.info("attaching %s to %s through libvirt (%s, persistent: %s); preflight: %s", disk.target_dev,
                 self.backend.vm, disk.shape, persistent, note)
        started = time.perf_counter()
        try:
            journal.mark(record, 0, "started")
            task = asyncio.ensure_future(attach_through_libvirt(self.backend, step, timeout))
            try:
                attached = await asyncio.shield(task)
            except asyncio.CancelledError:  # let libvirt's call finish, so the rollback sees what it did
                await shielded(lambda: asyncio.wait([task]), timeout + 15)
                raise
            step.state = "done"
            journal.set_status(record, "attached")
        except InputError:  # libvirt refused before changing anything (e.g. the target is taken)
            journal_quietly(lambda: journal.remove(record.target), [])
            raise
        except BaseException as exc:
            await self._roll_back(journal, record, 0, exc, before, timeout)
            raise AssertionError("unreachable") from None
        top = f"libvirt-{attached.source_index}-format" if attached.source_index is not None else disk.alias
        return AttachResult(self.backend.vm, disk.target_dev, disk.alias, top, disk.shape, note,
                            steps=(StepReport(step.execute, step.name, time.perf_counter() - started),),
                            header_fingerprint=header_fp, path="libvirt-native", persistent=persistent)

    async def _run_steps(self, journal: Journal, record: Record, plan: Plan, commands: list[dict[str, Any]],
                         before: VMSnapshot, timeout: float) -> list[StepReport]:
        reports: list[StepReport] = []
        index = 0
        sent = False  # the first mutation: from here on, only exit 1 or 3
        try:
            for index, (step, command) in enumerate(zip(plan.steps, commands)):
                journal.mark(record, index, "started")
                if log.isEnabledFor(logging.DEBUG):  # the redacted form: never the (sealed) secret value
                    log.debug("step %d/%d: %s", index + 1, len(plan.steps), json.dumps(redacted_command(step)))
                started = time.perf_counter()
                sent = True
                await send_step(self.backend, step, command)
                record.steps[index].state = "done"  # saved with the next change
                reports.append(StepReport(step.command, step.name, time.perf_counter() - started))
            journal.set_status(record, "attached")
            return reports
        except BaseException as exc:
            if not sent:
                journal_quietly(lambda: journal.remove(record.target), [])
                if isinstance(exc, OSError):
                    raise unsent(journal, exc) from None
                raise
            await self._roll_back(journal, record, index, exc, before, timeout)
            raise AssertionError("unreachable") from None

    async def _roll_back(self, journal: Journal, record: Record, failed: int, cause: BaseException,
                         before: VMSnapshot, timeout: float) -> None:
        """Undo steps ``failed..0`` that exist in the VM; raise RolledBack (1) or Incomplete (3)."""
        step = record.steps[failed]
        when = "after" if step.state == "done" else "at"  # e.g. the journal failed once the last step was done
        what = (f"{'step' if when == 'at' else 'after step'} {failed + 1}/{len(record.steps)} "
                f"({step.execute} {step.name}) {'failed' if when == 'at' else 'the attach failed'}: "
                f"{tx.describe_failure(cause)}{tx.requirement_hint(cause)}")
        notes: list[str] = []
        record.status, record.error = "rolling-back", what
        journal_quietly(lambda: journal.save(record), notes)
        log.info("%s; rolling back", what)
        outcome = await undo_shielded(self.backend, journal, record, record.steps[: failed + 1], timeout, before)
        rolled = f"rolled back: {', '.join(outcome.undone)}" if outcome.undone else "nothing to roll back"
        notes += outcome.notes
        if outcome.clean:
            journal_quietly(lambda: journal.remove(record.target), notes)
            extra = f" (note: {'; '.join(notes)}; `hotluks repair` removes the stale record)" if notes else ""
            raise RolledBackError(f"{what}; {rolled}; the VM is as before{extra}") from _cause(cause)
        record.status = outcome.status()
        record.error = f"{what}; rollback incomplete: {outcome.summary()}"
        final: list[str] = []
        journal_quietly(lambda: journal.save(record), final)
        lost = (f" (the journal could not be written: {'; '.join(final)}; repair has no record of it)"
                if final else "")
        raise tx.incomplete(f"{record.error}; run `hotluks repair {self.backend.vm}`{lost}", outcome) from _cause(cause)

    # -- detach ----------------------------------------------------------------
    async def detach(self, target: str | Disk, *, timeout: float = 30.0) -> DetachResult:
        """Undo a fully attached record: unplug, then delete nodes top-down, secrets and fdsets."""
        target_dev = target.target_dev if isinstance(target, Disk) else target
        started = time.perf_counter()
        ident = await self.identity()
        journal = await self.journal()
        async with await self._lock():
            record = load_to_change(journal, target_dev)
            if record is None or (tx.is_lost(record, ident.instance)
                                  and not tx.carried(record, await snapshot(self.backend))):
                if record is not None:  # its QEMU is gone: nothing of it is in this one
                    journal.remove(target_dev)
                return DetachResult(self.backend.vm, target_dev, record.device if record else "", (),
                                    time.perf_counter() - started, already_absent=True)
            refuse_interrupted(record, ("attached", "detaching"))
            live = await snapshot_first(self.backend, timeout)  # a monitor that cannot answer refuses here
            record.status = "detaching"
            save_before_sending(journal, record)
            outcome = await undo_shielded(self.backend, journal, record, record.steps, timeout, live=live)
            if not outcome.clean:
                record.error = outcome.summary()
                journal_quietly(lambda: journal.save(record), [])
                raise tx.incomplete(f"detach of {target_dev} incomplete: {record.error}; "
                                    f"run `hotluks repair {self.backend.vm}`", outcome)
            journal_quietly(lambda: journal.remove(target_dev), [])
            self._ports.freed(next((s.arguments.get("bus") for s in record.steps if s.kind == "device"), None))
            return DetachResult(self.backend.vm, target_dev, record.device, outcome.undone,
                                time.perf_counter() - started)


def _cause(exc: BaseException) -> BaseException | None:
    """The exception to chain (a HotluksError or QEMU error, not an interruption)."""
    return exc if isinstance(exc, (HotluksError, OSError)) else None

