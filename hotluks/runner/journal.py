"""Crash journal: one record per VM and target, updated before every step.

Records hold what was planned and done — the commands *without* secret values and
the state of each step — so that detach and repair work without the XML and nothing
secret lands on disk. The journal is not a command channel: undo commands are
derived from each step's kind and name (:func:`hotluks.runner.transaction.undo_command`),
never read from a record, and a record that fails :func:`validate` is treated as
corrupt (quarantined by ``repair``; it blocks only its own target).

A record file is JSON lines: the first line is the whole record (written atomically:
an O_EXCL|O_NOFOLLOW temporary + rename); each later line is one step-state change
``{"step": i, "state": "started"}`` appended before that step runs, or a status
change ``{"status": "attached"}``. Loading replays the changes; a last line cut
short by a killed process is ignored.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

from hotluks.errors import HotluksError
from hotluks.plan.names import guard_node, valid_name
from hotluks.plan.steps import Plan
from hotluks.runner.statedir import (
    UntrustedStateDirError,
    ensure_trusted_dir,
    read_regular,
    untrusted_reason,
    write_new,
)

Status = Literal["attaching", "attached", "rolling-back", "detaching", "needs-repair"]
StepState = Literal["pending", "started", "done", "undone"]
STATUSES = ("attaching", "attached", "rolling-back", "detaching", "needs-repair")
STEP_STATES = ("pending", "started", "done", "undone")
#: the command that creates each kind of step (anything else in a record is corruption)
CREATES = {"secret": "object-add", "node": "blockdev-add", "device": "device_add", "fd": "add-fd",
           "libvirt-disk": "attach-device"}  # the last: virDomainAttachDeviceFlags (libvirt-native path)
PATHS = ("qmp", "libvirt-native")
FD_TAG = "hotluks:"
RECORD_VERSION = 2
MAX_RECORD_BYTES = 1 << 20
_TARGET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,30}$")
_FDSET = re.compile(r"^fdset-([0-9]{1,9})$")

DEFAULT_STATE_DIR = "/var/lib/hotluks"


class CorruptRecordError(HotluksError):
    """A journal record is unreadable, fails the schema, or belongs to another VM."""


def default_state_dir() -> Path:
    """``$HOTLUKS_STATE_DIR``, else /var/lib/hotluks for root, else ~/.local/state/hotluks."""
    env = os.environ.get("HOTLUKS_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path(DEFAULT_STATE_DIR)
    return Path.home() / ".local" / "state" / "hotluks"


@dataclass
class JournalStep:
    """One step as recorded: the command (no secrets) and how far it got."""

    kind: str
    role: str
    name: str
    execute: str
    arguments: dict[str, Any]
    state: StepState = "pending"


@dataclass
class Record:
    """Everything hotluks knows about one disk it manages in one VM."""

    vm: str
    target: str
    device: str
    shape: str
    status: Status
    steps: list[JournalStep]
    vm_key: str = ""
    instance: str = ""
    fingerprint: str = ""
    #: sha256 of the header identity when attached with ``--pin`` (:mod:`hotluks.luks.fingerprint`)
    header_fingerprint: str = ""
    #: how the disk was plugged: hotluks' QMP steps, or libvirt's device API (one ``libvirt-disk`` step)
    path: str = "qmp"
    pid: int = field(default_factory=os.getpid)
    updated: float = field(default_factory=time.time)
    error: str | None = None
    version: int = RECORD_VERSION

    @classmethod
    def for_plan(cls, vm: str, plan: Plan, *, vm_key: str = "", instance: str = "",
                 fingerprint: str = "", header_fingerprint: str = "") -> Record:
        steps = [JournalStep(s.kind, s.role, s.name, s.command, s.qmp()["arguments"]) for s in plan.steps]
        return cls(vm=vm, target=plan.disk.target_dev, device=plan.device_id, shape=plan.disk.shape,
                   status="attaching", steps=steps, vm_key=vm_key, instance=instance, fingerprint=fingerprint,
                   header_fingerprint=header_fingerprint)

    @property
    def names(self) -> dict[str, set[str]]:
        """Names this record creates, by kind (secret objects, block nodes, devices, fdsets)."""
        out: dict[str, set[str]] = {"secret": set(), "node": set(), "device": set()}
        for step in self.steps:
            out.setdefault(step.kind, set()).add(step.name)
        return out

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready view (shares the argument dicts: serialise it, do not mutate it)."""
        doc = {name: getattr(self, name) for name in RECORD_FIELDS}
        doc["steps"] = [{name: getattr(step, name) for name in STEP_FIELDS} for step in self.steps]
        return doc

    @classmethod
    def from_json(cls, doc: Any) -> Record:
        """The record in ``doc``, validated (:func:`validate`)."""
        return validate(doc)


#: field names, in order (``dataclasses.fields`` is slow, and every journal save needs them)
RECORD_FIELDS = tuple(f.name for f in fields(Record))
STEP_FIELDS = tuple(f.name for f in fields(JournalStep))


def fdset_id(name: str) -> int | None:
    """``3`` for the fd step name ``fdset-3``."""
    match = _FDSET.match(name)
    return int(match.group(1)) if match else None


def _parse(text: str) -> Any:
    """``json.loads``, with nesting too deep for the parser reported as the ``ValueError`` it is."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise ValueError(what)


def validate(doc: Any, vm_key: str | None = None) -> Record:
    """Build a :class:`Record` from ``doc`` only if it matches the schema; ``ValueError`` says why.

    Every name must be one hotluks gives this target (``hl-TARGET-…``; a device may carry the
    disk's ``ua-`` alias; the migration guard is exactly the node ``hlg-TARGET`` and its fdset is
    tagged for that node), every command the one that creates its kind of step.
    """
    _check(isinstance(doc, dict), "not a JSON object")
    _check(doc.get("version", 1) in (1, RECORD_VERSION), f"unknown record version {doc.get('version')!r}")
    for key in ("vm", "target", "device", "shape"):
        _check(isinstance(doc.get(key), str), f"'{key}' is not a string")
    for key in ("vm_key", "instance", "fingerprint", "header_fingerprint"):
        _check(isinstance(doc.get(key, ""), str), f"'{key}' is not a string")
    _check(doc.get("path", "qmp") in PATHS, f"unknown path {doc.get('path')!r}")
    _check(doc.get("error") is None or isinstance(doc["error"], str), "'error' is not a string")
    target = doc["target"]
    _check(bool(_TARGET.match(target)), f"target {target!r} is not a valid target name")
    _check(doc.get("status") in STATUSES, f"unknown status {doc.get('status')!r}")
    if vm_key is not None and doc.get("vm_key"):
        _check(doc["vm_key"] == vm_key, "belongs to another VM")
    raw_steps = doc.get("steps")
    _check(isinstance(raw_steps, list) and 0 < len(raw_steps) <= 64, "'steps' is not a list of 1-64 steps")
    steps = [_validate_step(s, target) for s in raw_steps]
    nodes = {s.name for s in steps if s.kind == "node"}
    devices = [s.name for s in steps if s.kind in ("device", "libvirt-disk")]
    _check(devices == [doc["device"]], "the device step does not match 'device'")
    for step in steps:
        if step.kind == "fd":
            _check(step.arguments.get("opaque", "")[len(FD_TAG):] in nodes, f"{step.name} is for no node of it")
    names = [s.name for s in steps]
    _check(len(set(names)) == len(names), "a name appears twice")
    unknown = set(doc) - set(RECORD_FIELDS)
    _check(not unknown, f"unknown fields {sorted(unknown)}")
    pid, updated = doc.get("pid", 0), doc.get("updated", 0.0)
    _check(type(pid) is int and 0 <= pid < 1 << 32, "'pid' is not a process id")
    _check(type(updated) in (int, float) and 0 <= updated < 1e11, "'updated' is not a time")
    return Record(vm=doc["vm"], target=target, device=doc["device"], shape=doc["shape"], status=doc["status"],
                  steps=steps, vm_key=doc.get("vm_key", ""), instance=doc.get("instance", ""),
                  fingerprint=doc.get("fingerprint", ""), header_fingerprint=doc.get("header_fingerprint", ""),
                  path=doc.get("path", "qmp"), pid=pid, updated=float(updated), error=doc.get("error"),
                  version=RECORD_VERSION)


def _validate_step(raw: Any, target: str) -> JournalStep:
    _check(isinstance(raw, dict), "a step is not an object")
    kind, name, execute, args = raw.get("kind"), raw.get("name"), raw.get("execute"), raw.get("arguments")
    _check(isinstance(kind, str) and kind in CREATES, f"unknown step kind {kind!r}")
    _check(isinstance(name, str) and isinstance(raw.get("role"), str), "a step's name/role is not a string")
    _check(execute == CREATES[kind], f"step {name!r}: {execute!r} is not how hotluks creates a {kind}")
    _check(isinstance(args, dict), f"step {name!r}: arguments are not an object")
    _check(raw.get("state", "pending") in STEP_STATES, f"step {name!r}: unknown state")
    own, guard = f"hl-{target}", guard_node(target)
    if kind == "fd":
        number = fdset_id(name)
        _check(number is not None and args.get("fdset-id") == number, f"{name!r} is not an fdset hotluks chose")
        opaque = args.get("opaque")
        _check(isinstance(opaque, str) and (opaque.startswith(FD_TAG + own + "-") or opaque == FD_TAG + guard),
               f"{name!r} is not tagged for target {target}")
    else:
        ours = (name.startswith(own + "-") or (kind == "device" and (name == own or name.startswith("ua-")))
                or (kind == "node" and name == guard) or (kind == "libvirt-disk" and name.startswith("ua-")))
        if kind == "libvirt-disk":
            _check(args.get("target") == target and isinstance(args.get("persistent"), bool),
                   f"step {name!r}: not libvirt's disk {target}")
        _check(ours and valid_name(name), f"{name!r} is not a name hotluks gives target {target}")
        _check(args.get("node-name" if kind == "node" else "id") == name, f"step {name!r}: arguments name another")
    unknown = set(raw) - set(STEP_FIELDS) - {"undo"}  # v1 records stored an undo: ignored
    _check(not unknown, f"step {name!r}: unknown fields {sorted(unknown)}")
    return JournalStep(kind, raw["role"], name, execute, args, raw.get("state", "pending"))


def vm_dirname(vm_key: str) -> str:
    """A filesystem-safe, readable, unique directory name for a VM."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", vm_key).strip("_")[-60:]
    digest = hashlib.sha256(vm_key.encode()).hexdigest()[:12]
    return f"{readable}-{digest}"


class Journal:
    """The records of one VM (by its identity key) under a trusted ``state_dir``."""

    def __init__(self, state_dir: Path, vm_key: str):
        self.state_dir = state_dir
        self.vm_key = vm_key
        self.dir = state_dir / vm_dirname(vm_key)
        self._trusted = False

    def ensure(self, *, recheck: bool = False) -> None:
        """Create the VM's directory and refuse unless it and its parents are trusted (checked once
        per instance, or again with ``recheck``: every operation does, under its lock)."""
        if self._trusted and recheck and self.dir.parent == self.state_dir \
                and untrusted_reason(self.dir, strict=2) is None:
            return  # both exist and pass the same checks (one walk up instead of two, nothing to create)
        if recheck or not self._trusted:
            ensure_trusted_dir(self.state_dir)
            ensure_trusted_dir(self.dir)
            self._trusted = True

    def path(self, target: str) -> Path:
        if not _TARGET.match(target):
            raise HotluksError(f"{target!r} is not a valid target name")
        return self.dir / f"{target}.json"

    def save(self, record: Record) -> None:
        """Atomically replace the record (a fresh temporary renamed over the old one).

        Atomic against a killed process, which is what the journal is for. There is
        deliberately no fsync: a host crash that could lose the page cache also ends
        the QEMU process whose hot-plugged devices the record describes.
        """
        self.ensure()
        record.updated = time.time()
        record.pid = os.getpid()
        record.vm_key = record.vm_key or self.vm_key
        data = json.dumps(record.to_json(), separators=(",", ":")).encode() + b"\n"  # compact: C encoder
        write_new(self.dir, self.path(record.target), data)

    def mark(self, record: Record, index: int, state: StepState) -> None:
        """Set ``record.steps[index].state`` and append that change to the record file."""
        record.steps[index].state = state
        self._append(record, {"step": index, "state": state})

    def set_status(self, record: Record, status: Status) -> None:
        """Set ``record.status`` and append that change to the record file."""
        record.status = status
        self._append(record, {"status": status})

    def _append(self, record: Record, change: dict[str, Any]) -> None:
        line = json.dumps(change, separators=(",", ":")).encode() + b"\n"
        try:
            fd = os.open(self.path(record.target), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self.save(record)
            return
        try:
            if os.write(fd, line) != len(line):
                raise OSError(28, "short write to the journal")
        finally:
            os.close(fd)

    def load(self, target: str) -> Record | None:
        """The record of ``target``; :class:`CorruptRecordError` if it is not a valid record of this VM."""
        path = self.path(target)
        try:
            data = read_regular(path, MAX_RECORD_BYTES)
            if data is None:
                return None
            text = data.decode()
        except (ValueError, UnicodeDecodeError) as exc:
            raise CorruptRecordError(f"journal record {path} is corrupt: {exc}") from None
        first, *changes = text.splitlines() or [""]
        try:
            record = validate(_parse(first), self.vm_key)
        except ValueError as exc:
            try:  # a record written as one (indented) JSON document
                record, changes = validate(_parse(text), self.vm_key), []
            except ValueError:
                raise CorruptRecordError(f"journal record {path} is corrupt: {exc}") from None
        if record.target != target:
            raise CorruptRecordError(f"journal record {path} is corrupt: it is for target {record.target}")
        for number, line in enumerate(changes, start=2):
            try:
                change = _parse(line)
                if "status" in change:
                    _check(change["status"] in STATUSES, "unknown status")
                    record.status = change["status"]
                else:
                    _check(change["state"] in STEP_STATES and isinstance(change["step"], int)
                           and change["step"] >= 0, "bad step change")
                    record.steps[change["step"]].state = change["state"]
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                if number == len(changes) + 1:
                    break  # the last append was cut short by a kill: that step had not been sent
                raise CorruptRecordError(f"journal record {path} is corrupt at line {number}: {exc}") from None
        return record

    def remove(self, target: str) -> None:
        self.path(target).unlink(missing_ok=True)

    def quarantine(self, target: str) -> Path:
        """Move a corrupt record aside (``TARGET.json.quarantined-TIME``) so its target is usable again."""
        path = self.path(target)
        aside = path.with_name(f"{path.name}.quarantined-{time.time_ns()}")
        os.rename(path, aside)
        return aside

    def remove_stale_temporaries(self) -> list[str]:
        """Delete half-written temporaries a killed process left (call with the VM lock held)."""
        removed = []
        if self.dir.is_dir():
            for path in [*self.dir.glob(".*.json.*.tmp"), *self.dir.glob("*.tmp[0-9]*")]:
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def targets(self) -> list[str]:
        """Targets with a record, read-only (nothing is created; an untrusted directory is refused)."""
        if not self.dir.is_dir():
            return []
        reason = untrusted_reason(self.dir)
        if reason is not None:
            raise UntrustedStateDirError(f"refusing to read records from {self.dir}: {reason}")
        return sorted(p.name[:-5] for p in self.dir.glob("*.json") if _TARGET.match(p.name[:-5]))

    def entries(self) -> Iterator[tuple[str, Record | CorruptRecordError]]:
        """Each target with its record, or the error that makes it corrupt (only that target)."""
        for target in self.targets():
            try:
                record = self.load(target)
            except CorruptRecordError as exc:
                yield target, exc
                continue
            if record is not None:
                yield target, record

    def records(self) -> Iterator[Record]:
        """The valid records (corrupt ones are skipped: see :meth:`entries`)."""
        for _, entry in self.entries():
            if isinstance(entry, Record):
                yield entry
