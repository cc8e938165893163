"""Crash journal: one JSON record per VM and target, written before every step.

Records hold the plan's commands *without* secret values, so that detach and
repair can work without the XML and nothing secret lands on disk.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from hotluks.errors import HotluksError
from hotluks.plan.steps import Plan

Status = Literal["attaching", "attached", "rolling-back", "detaching", "needs-repair"]
StepState = Literal["pending", "started", "done", "undone"]

DEFAULT_STATE_DIR = "/var/lib/hotluks"


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
    """One step as recorded: the command (no secrets), its undo, and how far it got."""

    kind: str
    role: str
    name: str
    execute: str
    arguments: dict[str, Any]
    undo: dict[str, Any]
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
    pid: int = field(default_factory=os.getpid)
    updated: float = field(default_factory=time.time)
    error: str | None = None

    @classmethod
    def for_plan(cls, vm: str, plan: Plan) -> Record:
        steps = [JournalStep(s.kind, s.role, s.name, s.command, s.qmp()["arguments"], s.undo_qmp())
                 for s in plan.steps]
        return cls(vm=vm, target=plan.disk.target_dev, device=plan.device_id, shape=plan.disk.shape,
                   status="attaching", steps=steps)

    @property
    def names(self) -> dict[str, set[str]]:
        """Names this record creates, by kind (secret objects, block nodes, devices)."""
        out: dict[str, set[str]] = {"secret": set(), "node": set(), "device": set()}
        for step in self.steps:
            out[step.kind].add(step.name)
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Record:
        steps = [JournalStep(**s) for s in doc.pop("steps")]
        return cls(steps=steps, **doc)


def vm_dirname(vm_key: str) -> str:
    """A filesystem-safe, readable, unique directory name for a VM."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "_", vm_key).strip("_")[-60:]
    digest = hashlib.sha256(vm_key.encode()).hexdigest()[:12]
    return f"{readable}-{digest}"


class Journal:
    """The records of one VM under ``state_dir``."""

    def __init__(self, state_dir: Path, vm_key: str):
        self.vm_key = vm_key
        self.dir = state_dir / vm_dirname(vm_key)

    def ensure(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise HotluksError(f"cannot create state directory {self.dir}: {exc.strerror} "
                               "(use --state-dir or HOTLUKS_STATE_DIR)") from None

    def path(self, target: str) -> Path:
        return self.dir / f"{target}.json"

    def save(self, record: Record) -> None:
        """Atomically replace the record (write, fsync, rename)."""
        self.ensure()
        record.updated = time.time()
        record.pid = os.getpid()
        final = self.path(record.target)
        tmp = final.with_suffix(f".tmp{os.getpid()}")
        data = json.dumps(record.to_json(), indent=1).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)

    def load(self, target: str) -> Record | None:
        try:
            return Record.from_json(json.loads(self.path(target).read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as exc:
            raise HotluksError(f"journal record {self.path(target)} is corrupt: {exc}") from None

    def remove(self, target: str) -> None:
        self.path(target).unlink(missing_ok=True)

    def remove_stale_temporaries(self) -> list[str]:
        """Delete half-written ``*.tmpPID`` files a killed process left (call with the VM lock held)."""
        removed = []
        if self.dir.is_dir():
            for path in self.dir.glob("*.tmp*"):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed

    def records(self) -> Iterator[Record]:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json")):
            record = self.load(path.stem)
            if record is not None:
                yield record
