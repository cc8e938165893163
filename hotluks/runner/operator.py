"""Attach, detach, status and repair against one VM, all or nothing.

Every mutation is journaled before it is sent, happens under the VM's lock, and
is undone in reverse on failure; undo is verified against a fresh snapshot of
the VM's block nodes, objects and devices.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotluks.backends.base import MasterKey, MonitorBackend, QMPCommandError
from hotluks.errors import (
    BackendError,
    ConflictError,
    DetachTimeoutError,
    IncompleteError,
    NotAttached,
    RefusedError,
    RolledBackError,
)
from hotluks.headers.pins import PinStore, check_pin
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.planner import build_plan
from hotluks.plan.steps import Plan
from hotluks.render.qmp import bound_command, redacted_command
from hotluks.runner.fdpass import pass_file, remove_fdsets, tagged_fdsets, wants_fd
from hotluks.runner.journal import Journal, JournalStep, Record, default_state_dir
from hotluks.runner.lock import vm_lock
from hotluks.runner.preflight import check_passphrase_encoding, pick_passphrase, run_preflight, verify_pin
from hotluks.runner.vmstate import VMSnapshot, machine_type, plan_context, probe_capabilities, snapshot
from hotluks.secrets import SecretValue, resolve

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    """One executed step: the command (redacted) and how long QEMU took."""

    execute: str
    name: str
    seconds: float


@dataclass
class AttachResult:
    vm: str
    target: str
    device: str
    top_node: str
    shape: str
    preflight: str
    dry_run: bool = False
    steps: list[StepReport] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    header_fingerprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True, "vm": self.vm, "target": self.target, "device": self.device, "top-node": self.top_node,
            "shape": self.shape, "preflight": self.preflight, "dry-run": self.dry_run,
            **({"header-fingerprint": self.header_fingerprint} if self.header_fingerprint else {}),
            "steps": [{"execute": s.execute, "name": s.name, "seconds": round(s.seconds, 6)} for s in self.steps],
            **({"commands": self.commands} if self.dry_run else {}),
        }


@dataclass
class DetachResult:
    vm: str
    target: str
    device: str
    removed: list[str]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "vm": self.vm, "target": self.target, "device": self.device,
                "removed": self.removed, "seconds": round(self.seconds, 6)}


class Operator:
    """Runs plans against the VM behind ``backend``."""

    def __init__(self, backend: MonitorBackend, *, state_dir: Path | None = None,
                 master_key: MasterKey | None = None, lock_timeout: float = 120.0):
        self.backend = backend
        self.journal = Journal(state_dir or default_state_dir(), backend.vm_key)
        self.master_key = master_key
        self.lock_timeout = lock_timeout
        self._capabilities: Capabilities | None = None
        self._machine: str | None = None

    # -- helpers ---------------------------------------------------------------
    def _lock(self) -> Any:
        self.journal.ensure()
        return vm_lock(self.journal.dir, self.lock_timeout)

    async def capabilities(self) -> Capabilities:
        """Probe once per connection (query-version + query-qmp-schema)."""
        if self._capabilities is None:
            self._capabilities = await probe_capabilities(self.backend, self.journal.dir.parent / "capabilities")
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

    # -- attach ----------------------------------------------------------------
    async def attach(self, disk: Disk, secrets: Mapping[str, SecretValue] | None = None, *,
                     preflight: bool = True, dry_run: bool = False, timeout: float = 30.0,
                     pin: bool = False) -> AttachResult:
        """Attach ``disk``: refuse (exit 2), succeed, or roll back completely (exit 1).

        ``timeout`` bounds the wait for the guest to release the device if a rollback
        has to unplug it (only when QEMU ran ``device_add`` but its reply was lost).
        """
        async with self._lock():
            existing = self.journal.load(disk.target_dev)
            if existing is not None:
                if existing.status == "attached":
                    raise ConflictError(f"target {disk.target_dev} is already attached by hotluks "
                                        f"(device {existing.device}); detach it first")
                raise RefusedError(f"an interrupted {existing.status} operation on target {disk.target_dev} "
                                   "is recorded; run `hotluks repair` first")
            caps = await self.capabilities()
            before = await snapshot(self.backend)
            plan = build_plan(disk, caps, await plan_context(self.backend, disk, before,
                                                             machine=await self.machine()))
            values = await self._secret_values(plan, secrets or {})
            sealing = self._sealing_key()
            note = "skipped (--no-preflight)"
            pinned = await check_pin(disk, PinStore(self.journal.dir.parent / "pins"), values, timeout) if pin else None
            passphrase = pick_passphrase(disk, values)
            if passphrase is not None:
                check_passphrase_encoding(disk, passphrase)
            if preflight and passphrase is not None:
                note = await run_preflight(disk, passphrase, values, timeout)
            else:  # a pinned header is checked even without the passphrase preflight
                note = await verify_pin(disk, values, timeout) or note
            commands = [bound_command(step, values, sealing) for step in plan.steps]
            result = AttachResult(vm=self.backend.vm, target=disk.target_dev, device=plan.device_id,
                                  top_node=plan.top_node, shape=disk.shape, preflight=note, dry_run=dry_run,
                                  header_fingerprint=pinned.fingerprint if pinned else None)
            if dry_run:
                result.commands = [redacted_command(step) for step in plan.steps]
                return result
            record = Record.for_plan(self.backend.vm, plan)
            record.header_fingerprint = pinned.fingerprint if pinned else None
            self.journal.save(record)
            log.info("attaching %s to %s as %s (%s, %d steps); preflight: %s", disk.target_dev, self.backend.vm,
                     plan.device_id, disk.shape, len(plan.steps), note)
            for index, (step, command) in enumerate(zip(plan.steps, commands)):
                self.journal.mark(record, index, "started")
                if log.isEnabledFor(logging.DEBUG):  # the redacted form: never the (sealed) secret value
                    log.debug("step %d/%d: %s", index + 1, len(plan.steps), json.dumps(redacted_command(step)))
                started = time.perf_counter()
                try:
                    arguments = command["arguments"]
                    if step.kind == "node" and wants_fd(self.backend, arguments):
                        arguments = await pass_file(self.backend, arguments)
                    await self.backend.execute(command["execute"], arguments)
                except BackendError as exc:
                    await self._roll_back(record, index, exc, before, timeout)
                record.steps[index].state = "done"  # saved with the next change
                result.steps.append(StepReport(step.command, step.name, time.perf_counter() - started))
            self.journal.set_status(record, "attached")
            if pinned is not None and pinned.first_use:
                PinStore(self.journal.dir.parent / "pins").record(pinned.source, pinned.fingerprint)
            return result

    async def _roll_back(self, record: Record, failed: int, cause: BackendError, before: VMSnapshot,
                         timeout: float) -> None:
        """Undo steps ``failed..0`` that exist in the VM; raise RolledBack or Incomplete."""
        step = record.steps[failed]
        what = (f"step {failed + 1}/{len(record.steps)} ({step.execute} {step.name}) failed: "
                f"{_qemu_text(cause)}{_requirement_hint(cause)}")
        record.status = "rolling-back"
        record.error = what
        self.journal.save(record)
        log.info("%s; rolling back", what)
        undone, problems = await self._undo_existing(record, record.steps[: failed + 1], timeout=timeout)
        diff = ""
        # a VM that did not answer the undo's query (e.g. QEMU blocked in librados' connect) is
        # not asked again: that would only add another full backend timeout before exit 3
        if not any(p.startswith("cannot query the VM") for p in problems):
            try:
                after = await snapshot(self.backend)
                # our names must be gone and nothing that existed before may be missing; names another
                # client (libvirt, a human) added meanwhile are not ours to roll back
                diff = after.difference(before, extra_among=set().union(*record.names.values()))
                leftover = await tagged_fdsets(self.backend, record.names["node"])
                if leftover:
                    diff = "; ".join(filter(None, [diff, f"extra fdsets: {', '.join(map(str, leftover))}"]))
            except BackendError as exc:
                # unreachable VM: _undo_existing already said so; do not repeat it
                diff = "" if problems else f"cannot verify ({_qemu_text(exc)})"
        rolled = f"rolled back: {', '.join(undone)}" if undone else "nothing to roll back"
        if not problems and not diff:
            self.journal.remove(record.target)
            raise RolledBackError(f"{what}; {rolled}; the VM is as before")
        record.status = "needs-repair"
        record.error = f"{what}; rollback incomplete: {'; '.join(problems + ([diff] if diff else []))}"
        self.journal.save(record)
        raise IncompleteError(f"{record.error}; run `hotluks repair {self.backend.vm}`")

    async def _undo_existing(self, record: Record, steps: list[JournalStep], *,
                             timeout: float) -> tuple[list[str], list[str]]:
        """Undo, newest first, each of ``steps`` whose object still exists. Returns (undone, problems)."""
        undone: list[str] = []
        problems: list[str] = []
        try:
            live = await snapshot(self.backend)
        except BackendError as exc:
            return undone, [f"cannot query the VM: {_qemu_text(exc)}"]
        present = {"secret": live.objects, "node": live.nodes, "device": live.devices}
        for step in reversed(steps):
            if step.name not in present[step.kind]:
                continue
            try:
                log.debug("undo: %s %s", step.undo["execute"], step.name)
                if step.kind == "device":
                    await self._unplug(step.name, timeout)
                else:
                    await self.backend.execute(step.undo["execute"], step.undo["arguments"])
                undone.append(f"{step.undo['execute']} {step.name}")
                self.journal.mark(record, record.steps.index(step), "undone")
            except DetachTimeoutError as exc:
                problems.append(str(exc))
                break  # nothing below a device the guest still holds may be deleted
            except BackendError as exc:
                problems.append(f"{step.undo['execute']} {step.name}: {_qemu_text(exc)}")
        if not problems:  # descriptors handed to QEMU for nodes that are gone now (or never made it)
            try:
                undone += await remove_fdsets(self.backend, [s.name for s in steps if s.kind == "node"])
            except BackendError as exc:
                problems.append(f"remove-fd: {_qemu_text(exc)}")
        return undone, problems

    # -- detach ----------------------------------------------------------------
    async def _unplug(self, device: str, timeout: float) -> None:
        """``device_del`` and wait for the guest to release the device (bounded)."""
        with self.backend.events(["DEVICE_DELETED"]) as events:
            try:
                await self.backend.execute("device_del", {"id": device})
            except QMPCommandError as exc:
                if not await self._device_present(device):
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
                    if not await self._device_present(device):
                        return
        raise DetachTimeoutError(
            f"the guest did not release device {device} within {timeout:g}s (no DEVICE_DELETED); "
            "nothing was deleted under it. Retry later; QEMU completes the unplug when the guest acknowledges it")

    async def _device_present(self, device: str) -> bool:
        listing = await self.backend.execute("qom-list", {"path": "/machine/peripheral"})
        return any(e.get("name") == device for e in listing)

    async def detach(self, target: str | Disk, *, timeout: float = 30.0) -> DetachResult:
        """Unplug the device, then delete its nodes top-down and its secret objects."""
        target_dev = target.target_dev if isinstance(target, Disk) else target
        started = time.perf_counter()
        async with self._lock():
            record = self.journal.load(target_dev)
            if record is None:
                raise NotAttached(f"hotluks has no record of target {target_dev} in {self.backend.vm} "
                                  "(see `hotluks status`)")
            if record.status not in ("attached", "detaching"):
                raise RefusedError(f"target {target_dev} has an interrupted {record.status} operation; "
                                   "run `hotluks repair` first")
            record.status = "detaching"
            self.journal.save(record)
            undone, problems = await self._undo_existing(record, record.steps, timeout=timeout)
            timed_out = next((p for p in problems if "did not release" in p), None)
            if timed_out is not None:
                record.status = "attached"
                record.error = timed_out
                self.journal.save(record)
                raise DetachTimeoutError(timed_out)
            live = await snapshot(self.backend)
            left = sorted(live.names & set().union(*record.names.values()))
            if problems or left:
                record.error = "; ".join(problems + ([f"still present: {', '.join(left)}"] if left else []))
                self.journal.save(record)
                raise IncompleteError(f"detach of {target_dev} incomplete: {record.error}; "
                                      f"run `hotluks repair {self.backend.vm}`")
            self.journal.remove(target_dev)
            return DetachResult(self.backend.vm, target_dev, record.device, undone, time.perf_counter() - started)

    # -- status / repair -------------------------------------------------------
    async def status(self) -> list[dict[str, Any]]:
        """hotluks-managed disks of this VM with the live presence of each node/object/device."""
        live = await snapshot(self.backend)
        present = {"secret": live.objects, "node": live.nodes, "device": live.devices}
        out = []
        for record in self.journal.records():
            items = [{"kind": s.kind, "name": s.name, "present": s.name in present[s.kind]} for s in record.steps]
            consistent = all(i["present"] for i in items) if record.status == "attached" else False
            out.append({"target": record.target, "device": record.device, "shape": record.shape,
                        "status": record.status, "consistent": consistent, "error": record.error, "items": items,
                        "header-fingerprint": record.header_fingerprint})
        return out

    async def repair(self, *, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Finish interrupted detaches and undo interrupted attaches; idempotent."""
        actions = []
        async with self._lock():
            self.journal.remove_stale_temporaries()  # a process killed while saving a record
            for record in list(self.journal.records()):
                if record.status == "attached":
                    continue
                verb = "finished detach" if record.status == "detaching" else "rolled back interrupted attach"
                undone, problems = await self._undo_existing(record, record.steps, timeout=timeout)
                live = await snapshot(self.backend)
                left = sorted(live.names & set().union(*record.names.values()))
                if problems or left:
                    record.status = "needs-repair" if record.status != "detaching" else "detaching"
                    record.error = "; ".join(problems + ([f"still present: {', '.join(left)}"] if left else []))
                    self.journal.save(record)
                    actions.append({"target": record.target, "action": "incomplete", "undone": undone,
                                    "error": record.error})
                    continue
                self.journal.remove(record.target)
                actions.append({"target": record.target, "action": verb, "undone": undone})
        return actions


#: QEMU texts that mean "the librbd QEMU is linked against is too old", and what is needed: QEMU
#: only builds 'luks-any' and 'parent' with librbd's rbd_encryption_load2 (Ceph Reef; not in Quincy)
LIBRBD_REQUIREMENTS = (
    ("unknown image encryption format: 2", "encryption format 'luks-any' needs QEMU built against librbd "
                                           "≥ 18 (Ceph Reef, rbd_encryption_load2)"),
    ("does not support layered encryption", "layered encryption (a 'parent' per clone layer) needs QEMU "
                                            "built against librbd ≥ 18 (Ceph Reef, rbd_encryption_load2)"),
)


def _requirement_hint(exc: BaseException) -> str:
    """`` (…needs librbd ≥ 18…)`` when QEMU's error means an old librbd, else ``""``."""
    if isinstance(exc, QMPCommandError):
        for text, need in LIBRBD_REQUIREMENTS:
            if text in exc.desc:
                return f" ({need})"
    return ""


def _qemu_text(exc: BaseException) -> str:
    if isinstance(exc, QMPCommandError):
        return f"QEMU said: {exc.desc}"
    return str(exc)

