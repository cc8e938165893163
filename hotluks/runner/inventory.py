"""Every VM with records in a state directory, and whether its recorded QEMU still runs.

``hotluks status --all`` starts here. A VM's directory is named after its identity key
(:func:`hotluks.runner.journal.vm_dirname`); the key itself, and the name the user gave
(``vm``: a libvirt domain or a QMP socket), are read from its records, and only a
directory whose name is the one that key gives is accepted. Nothing is created or
locked: like ``status``, this is read-only.

Whether the recorded QEMU still runs is first decided from ``/proc`` alone: an
instance is ``PID-STARTTIME``, and when that process is gone (or the pid now names
another process) every record of it is ``lost`` without asking QEMU or libvirt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hotluks.backends.identity import process_instance
from hotluks.runner.journal import MAX_RECORD_BYTES, CorruptRecordError, Journal, Record, vm_dirname
from hotluks.runner.results import StatusEntry, StatusItem
from hotluks.runner.statedir import UntrustedStateDirError, read_regular, untrusted_reason

#: directories of the state directory that hold no VM's records
NOT_VMS = frozenset({"capabilities", "pins", "keys"})
#: the key of a bare QMP VM without a UUID: its QEMU process (``qemu-pidPID-STARTTIME``)
QEMU_PROCESS_KEY = "qemu-pid"


@dataclass(frozen=True)
class KnownVM:
    """One VM with records: its identity key, the name it was reached by, and its records."""

    vm_key: str
    vm: str
    journal: Journal
    entries: tuple[tuple[str, Record | CorruptRecordError], ...]

    @property
    def instances(self) -> set[str]:
        return {e.instance for _, e in self.entries if isinstance(e, Record) and e.instance}


def _record_key(path: Path) -> tuple[str, str] | None:
    """``(vm_key, vm)`` from the first line of a record file, or None when unreadable."""
    try:
        data = read_regular(path, MAX_RECORD_BYTES)
        doc = json.loads((data or b"").decode().splitlines()[0]) if data else None
    except (ValueError, UnicodeDecodeError, IndexError):
        return None
    if isinstance(doc, dict) and isinstance(doc.get("vm_key"), str) and isinstance(doc.get("vm"), str) \
            and doc["vm_key"]:
        return doc["vm_key"], doc["vm"]
    return None


def known_vms(state_dir: Path) -> list[KnownVM]:
    """Each VM with at least one record under ``state_dir`` (an untrusted directory is refused)."""
    if not state_dir.is_dir():
        return []
    reason = untrusted_reason(state_dir)
    if reason is not None:
        raise UntrustedStateDirError(f"refusing to read records from {state_dir}: {reason}")
    out = []
    for sub in sorted(state_dir.iterdir()):
        if sub.name in NOT_VMS or sub.is_symlink() or not sub.is_dir():
            continue
        keys = [k for k in map(_record_key, sorted(sub.glob("*.json"))) if k is not None]
        key = next((k for k in keys if vm_dirname(k[0]) == sub.name), None)
        if key is None:
            continue  # not a VM directory of ours (or only corrupt records: `repair VM` sees them)
        journal = Journal(state_dir, key[0])
        entries = tuple(journal.entries())
        if entries:
            out.append(KnownVM(key[0], key[1], journal, entries))
    return out


def instance_gone(instance: str) -> bool:
    """True when the QEMU process ``PID-STARTTIME`` no longer runs (False when it cannot be told)."""
    pid, _, started = instance.partition("-")
    if not pid.isdigit() or not started.isdigit():
        return False  # e.g. "domid5": only libvirt can tell
    return process_instance(int(pid)) != instance


def offline_entries(vm: KnownVM, status: str, why: str) -> list[StatusEntry]:
    """The entries of a VM that cannot be asked: every record ``status`` (``lost`` or ``unknown``)."""
    out = []
    for target, entry in vm.entries:
        if isinstance(entry, CorruptRecordError):
            out.append(StatusEntry(target, "", "", "corrupt", False, True, str(entry)))
            continue
        items = tuple(StatusItem(s.kind, s.name, False) for s in entry.steps)
        out.append(StatusEntry(target, entry.device, entry.shape, status, False, False, why,
                               items, False, entry.header_fingerprint or None))
    return out


def vm_gone_for_good(vm: KnownVM) -> bool:
    """A VM that can never run again: one known only by its QEMU process (no UUID), which is gone."""
    instance = vm.vm_key[len(QEMU_PROCESS_KEY):] if vm.vm_key.startswith(QEMU_PROCESS_KEY) else ""
    return bool(instance) and instance_gone(instance)
