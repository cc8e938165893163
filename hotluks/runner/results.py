"""Typed results of attach, detach, status and repair.

Schema (every key snake_case; ``to_json()`` returns exactly this as a plain dict):

- ``AttachResult``: ok, vm, target, device, top_node, shape, preflight, dry_run, path (qmp |
  libvirt-native), persistent, key_file (QMP path + ``--persistent``, else null),
  already_attached, steps [{execute, name, seconds}], and commands (dry runs only:
  the exact QMP commands a real run sends, secrets redacted), header_fingerprint (``--pin`` only).
- ``DetachResult``: ok, vm, target, device, removed [str], seconds, already_absent, persistent (taken
  out of the domain's definition too).
- ``StatusEntry``: target, device, shape, status (attaching | attached | rolling-back |
  detaching | needs-repair | lost | corrupt), consistent, needs_repair, error,
  items [{kind, name, present}], in_progress (another process is working on this VM now),
  header_fingerprint (the pin recorded by ``attach --pin``, else null), not_covered [{kind
  (snapshot | checkpoint | backup), name, created (Unix seconds or null), state (running |
  completed | null)}] (libvirt's snapshots, checkpoints, backup jobs since the attach that
  leave the disk out).
- ``RepairAction``: target, action (rolled back interrupted attach | finished detach |
  incomplete | quarantined | lost | forgotten), undone [str], error.

Each result is a frozen dataclass *and* a read-only view of its JSON as a ``dict``
(it subclasses ``dict``, filled from ``to_json()`` when created), so ``json.dumps(result)``
and ``result["target"]`` both work without a ``default=`` hook.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hotluks.lifecycle.coverage import Moment


class JSONResult(dict[str, Any]):
    """Base: a dataclass whose ``dict`` contents are its ``to_json()``."""

    def __post_init__(self) -> None:
        dict.update(self, self.to_json())

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    __hash__ = None


@dataclass(frozen=True, eq=False)
class StepReport(JSONResult):
    """One executed step: the command and how long QEMU took."""

    execute: str
    name: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"execute": self.execute, "name": self.name, "seconds": round(self.seconds, 6)}


@dataclass(frozen=True, eq=False)
class AttachResult(JSONResult):
    vm: str
    target: str
    device: str
    top_node: str
    shape: str
    preflight: str
    dry_run: bool = False
    steps: tuple[StepReport, ...] = ()
    commands: tuple[dict[str, Any], ...] = ()
    already_attached: bool = False
    #: the pinned header identity (``attach --pin``), else None
    header_fingerprint: str | None = None
    #: ``qmp`` (hotluks' steps through the monitor) or ``libvirt-native`` (libvirt's device API)
    path: str = "qmp"
    #: ``--persistent``: the disk is in the domain's definition too (libvirt's own, or ``<qemu:commandline>``)
    persistent: bool = False
    #: the key file sealing its secrets in ``<qemu:commandline>`` (QMP path + ``--persistent``), else None
    key_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "vm": self.vm, "target": self.target, "device": self.device, "top_node": self.top_node,
                "shape": self.shape, "preflight": self.preflight, "dry_run": self.dry_run, "path": self.path,
                "persistent": self.persistent, "key_file": self.key_file,
                "already_attached": self.already_attached, "steps": [s.to_json() for s in self.steps],
                **({"commands": list(self.commands)} if self.dry_run else {}),
                **({"header_fingerprint": self.header_fingerprint} if self.header_fingerprint else {})}


@dataclass(frozen=True, eq=False)
class DetachResult(JSONResult):
    vm: str
    target: str
    device: str
    removed: tuple[str, ...]
    seconds: float
    already_absent: bool = False
    #: the disk was taken out of the domain's definition too (``<qemu:commandline>``, as ``persist --remove``)
    persistent: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "vm": self.vm, "target": self.target, "device": self.device,
                "removed": list(self.removed), "seconds": round(self.seconds, 6), "already_absent": self.already_absent,
                "persistent": self.persistent}


@dataclass(frozen=True, eq=False)
class StatusItem(JSONResult):
    kind: str
    name: str
    present: bool

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "present": self.present}


@dataclass(frozen=True, eq=False)
class StatusEntry(JSONResult):
    target: str
    device: str
    shape: str
    status: str
    consistent: bool
    needs_repair: bool
    error: str | None = None
    #: the record's items (``"items"`` in JSON; an attribute named ``items`` would hide ``dict.items``)
    components: tuple[StatusItem, ...] = field(default=())
    in_progress: bool = False
    header_fingerprint: str | None = None
    #: libvirt snapshots, checkpoints and backup jobs since the attach that leave this disk out
    not_covered: tuple[Moment, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "device": self.device, "shape": self.shape, "status": self.status,
                "consistent": self.consistent, "needs_repair": self.needs_repair, "error": self.error,
                "items": [i.to_json() for i in self.components], "in_progress": self.in_progress,
                "header_fingerprint": self.header_fingerprint,
                "not_covered": [m.to_json() for m in self.not_covered]}


@dataclass(frozen=True, eq=False)
class RepairAction(JSONResult):
    target: str
    action: str
    undone: tuple[str, ...] = ()
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "action": self.action, "undone": list(self.undone), "error": self.error}
