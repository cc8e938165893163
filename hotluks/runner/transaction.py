"""The transaction core: every attach/rollback/detach/repair decision, with no I/O.

The executor (:mod:`hotluks.runner.operator`) locks, journals and sends; what to send
next, what to undo, what counts as "as before", which status a record has and which
exit code an outcome gets are decided here from records, replies and snapshots.
Detach is the rollback of a fully attached record, so both use :func:`undo_order` and
:func:`verify`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hotluks.errors import ConflictError, DetachTimeoutError, HotluksError, IncompleteError, RefusedError
from hotluks.runner.guardplan import GUARD_ROLE
from hotluks.runner.journal import FD_TAG, CorruptRecordError, JournalStep, Record, fdset_id
from hotluks.runner.vmstate import VMSnapshot

UNDO = {"secret": "object-del", "node": "blockdev-del", "device": "device_del", "fd": "remove-fd",
        "libvirt-disk": "detach-device"}


class UnplugPendingError(IncompleteError, DetachTimeoutError):
    """The guest has not released a device yet; QEMU still holds the unplug request.

    The record stays ``detaching`` and ``hotluks repair`` finishes the job once the
    guest lets go (exit 3: the VM is not as it was before, and not yet as asked).
    """

    exit_code = 3


def undo_command(step: JournalStep) -> tuple[str, dict[str, Any]]:
    """The command that undoes ``step``, derived from its kind and name (never read from a record)."""
    if step.kind == "fd":
        number = fdset_id(step.name)
        if number is None:
            raise ValueError(f"{step.name} is not an fdset name")
        return "remove-fd", {"fdset-id": number}
    if step.kind == "libvirt-disk":  # through libvirt, by target (never arguments replayed from the record)
        return "detach-device", {"id": step.name, "target": step.arguments.get("target"),
                                 "persistent": step.arguments.get("persistent") is True}
    key = "node-name" if step.kind == "node" else "id"
    return UNDO[step.kind], {key: step.name}


def present(step: JournalStep, live: VMSnapshot) -> bool:
    """Whether what ``step`` creates exists in ``live`` (an fdset only with hotluks' tag for its node)."""
    if step.kind == "fd":
        number = fdset_id(step.name)
        return number is not None and step.arguments.get("opaque") in live.fdsets.get(number, ())
    return step.name in {"secret": live.objects, "node": live.nodes, "device": live.devices,
                         "libvirt-disk": live.devices}[step.kind]


def undo_order(steps: list[JournalStep], live: VMSnapshot) -> list[int]:
    """Indexes of ``steps`` to undo, newest first: those whose object is in the VM."""
    return [i for i in reversed(range(len(steps))) if present(steps[i], live)]


def leftovers(record: Record, live: VMSnapshot) -> list[str]:
    """What of ``record`` is still in the VM (also any fdset tagged for one of its nodes)."""
    left = [s.name for s in record.steps if present(s, live)]
    tags = {f"{FD_TAG}{s.name}" for s in record.steps if s.kind == "node"}
    return left + [f"fdset-{i}" for i, opaque in sorted(live.fdsets.items())
                   if opaque & tags and f"fdset-{i}" not in left]


def remaining_problems(failed: list[tuple[JournalStep, str]], after: VMSnapshot) -> list[str]:
    """Failed undo commands that matter: those whose object is still there (a lost reply of an undo
    that QEMU did run is no problem)."""
    return [problem for step, problem in failed if present(step, after)]


def verify(record: Record, after: VMSnapshot, before: VMSnapshot | None = None) -> str:
    """'' when the VM is "as before": nothing of ``record`` left and nothing of ``before`` gone.

    Names other clients (libvirt, a human) added meanwhile are not ours to judge.
    """
    parts = []
    left = leftovers(record, after)
    if left:
        parts.append(f"still present: {', '.join(left)}")
    if before is not None:
        for label, then, now in (("nodes", before.nodes, after.nodes), ("objects", before.objects, after.objects),
                                 ("devices", before.devices, after.devices),
                                 ("fdsets", set(map(str, before.fdsets)), set(map(str, after.fdsets)))):
            if then - now:
                parts.append(f"missing {label}: {', '.join(sorted(then - now))}")
    return "; ".join(parts)


# -- statuses ---------------------------------------------------------------------------------------
EntryStatus = Literal["attaching", "attached", "rolling-back", "detaching", "needs-repair", "lost", "corrupt"]


def is_lost(record: Record, instance: str) -> bool:
    """The record was written for a QEMU process that is no longer the one running (both known)."""
    return bool(record.instance) and bool(instance) and record.instance != instance


def carried(record: Record, live: VMSnapshot) -> bool:
    """An attached record of an earlier QEMU whose disk this QEMU has anyway: every secret object, node
    and device of it by name (not its descriptors or migration guard, which belong to one process).
    Only a domain definition that carries the disk (``hotluks persist``) recreates hotluks' names."""
    core = [s for s in record.steps if s.kind != "fd" and s.role != GUARD_ROLE]
    return record.status == "attached" and bool(core) and all(present(s, live) for s in core)


def native_persistent(record: Record) -> bool:
    """A libvirt-native record whose disk libvirt also keeps in the domain's definition."""
    return any(s.kind == "libvirt-disk" and s.arguments.get("persistent") is True for s in record.steps)


def missing(record: Record, live: VMSnapshot, instance: str) -> list[str]:
    """What an attached record lacks in ``live`` (for a carried record: only its disk's own parts)."""
    parts = record.steps
    if is_lost(record, instance):
        parts = [s for s in parts if s.kind != "fd" and s.role != GUARD_ROLE]
    return [s.name for s in parts if not present(s, live)]


def entry_status(record: Record, live: VMSnapshot, instance: str) -> tuple[EntryStatus, bool]:
    """``(status, consistent)`` of a record against the live VM: ``lost`` never counts as attached,
    but a disk the domain's definition brought back into a new QEMU is attached (:func:`carried`)."""
    if is_lost(record, instance):
        return ("attached", True) if carried(record, live) else ("lost", False)
    consistent = record.status == "attached" and all(present(s, live) for s in record.steps)
    return record.status, consistent


def needs_repair(status: str, consistent: bool) -> bool:
    """Whether ``status`` should exit 3 (something for ``repair`` or an operator to do)."""
    return status == "corrupt" or (status not in ("attached", "lost")) or (status == "attached" and not consistent)


# -- decisions ---------------------------------------------------------------------------------------
AttachStart = Literal["new", "replace-lost", "already-attached"]


def attach_start(existing: Record | CorruptRecordError | None, fingerprint: str, instance: str,
                 target: str, is_carried: bool = False) -> AttachStart:
    """Whether an attach on ``target`` starts, replaces a lost record, or is already done (else refused)."""
    if existing is None:
        return "new"
    if isinstance(existing, CorruptRecordError):
        raise RefusedError(f"{existing}; it blocks target {target} until `hotluks repair` quarantines it")
    if is_lost(existing, instance) and not is_carried:
        return "replace-lost"
    if existing.status == "attached":
        if existing.fingerprint and existing.fingerprint == fingerprint:
            return "already-attached"
        raise ConflictError(f"target {target} is already attached by hotluks with another disk "
                            f"(device {existing.device}); detach it first")
    raise RefusedError(f"an interrupted {existing.status} operation on target {target} is recorded; "
                       "run `hotluks repair` first")


RepairStep = Literal["quarantine", "keep-lost", "forget", "keep-attached", "undo"]


def repair_step(entry: Record | CorruptRecordError, instance: str, is_carried: bool = False) -> RepairStep:
    """What ``repair`` does with a record: an attached disk of a gone QEMU is kept (``attach`` plugs it
    again, or the definition carried it); an unfinished operation of a gone QEMU is forgotten."""
    if isinstance(entry, CorruptRecordError):
        return "quarantine"
    if is_lost(entry, instance) and not is_carried:
        return "keep-lost" if entry.status == "attached" else "forget"
    return "keep-attached" if entry.status == "attached" else "undo"


@dataclass(frozen=True)
class UndoOutcome:
    """What an undo (rollback, detach, repair) achieved."""

    undone: tuple[str, ...]
    problems: tuple[str, ...]
    pending_unplug: bool
    diff: str
    #: journal writes that failed meanwhile (they do not make the VM any less "as before")
    notes: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        return not self.problems and not self.diff

    def status(self) -> Literal["detaching", "needs-repair"]:
        """The record status when not clean: a pending unplug is ``detaching`` (repair finishes it)."""
        return "detaching" if self.pending_unplug else "needs-repair"

    def summary(self) -> str:
        return "; ".join([*self.problems, *([self.diff] if self.diff else [])])


def incomplete(message: str, outcome: UndoOutcome) -> HotluksError:
    """The exit-3 error for an unclean undo (a pending unplug keeps its own class)."""
    return UnplugPendingError(message) if outcome.pending_unplug else IncompleteError(message)


def describe_failure(exc: BaseException) -> str:
    """Why a step failed, in words (QEMU's text, a local error, an interruption)."""
    from hotluks.backends.base import QMPCommandError

    if isinstance(exc, QMPCommandError):
        return f"QEMU said: {exc.desc}"
    if isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else "")
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or type(exc).__name__ == "CancelledError":
        return "interrupted (cancelled or signalled)"
    return str(exc) or type(exc).__name__


#: QEMU texts that mean "the librbd QEMU is linked against is too old", and what is needed: QEMU
#: only builds 'luks-any' and 'parent' with librbd's rbd_encryption_load2 (Ceph Reef; not in Quincy)
LIBRBD_REQUIREMENTS = (
    ("unknown image encryption format: 2", "encryption format 'luks-any' needs QEMU built against librbd "
                                           "≥ 18 (Ceph Reef, rbd_encryption_load2)"),
    ("does not support layered encryption", "layered encryption (a 'parent' per clone layer) needs QEMU "
                                            "built against librbd ≥ 18 (Ceph Reef, rbd_encryption_load2)"),
)


def requirement_hint(exc: BaseException) -> str:
    """`` (…needs librbd ≥ 18…)`` when QEMU's error means an old librbd, else ``""``."""
    from hotluks.backends.base import QMPCommandError

    if isinstance(exc, QMPCommandError):
        for text, need in LIBRBD_REQUIREMENTS:
            if text in exc.desc:
                return f" ({need})"
    return ""


__all__ = ["FD_TAG", "CorruptRecordError", "UNDO", "UnplugPendingError", "undo_command", "present", "undo_order", "leftovers", "remaining_problems", "verify",
           "entry_status", "needs_repair", "attach_start", "repair_step", "UndoOutcome", "incomplete",
           "describe_failure", "requirement_hint", "is_lost", "carried", "missing"]
