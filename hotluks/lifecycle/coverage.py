"""Which of libvirt's snapshots, checkpoints and backups leave a hotluks disk out (pure: no I/O).

libvirt's qemu driver builds a ``--disk-only`` snapshot and a ``backup-begin`` from the disks
of its own domain definition; a disk hotluks plugged through the monitor is not among them,
and nothing in QEMU or libvirt refuses either operation because of it (README, Lifecycle).
So ``hotluks status`` says so afterwards: every snapshot or checkpoint libvirt created since
the attach began (the record's first write), every backup job running now, and the last completed backup job libvirt
still reports, that do not name the disk's target, are listed as not covering it.

Parsers take libvirt's own XML (``virDomainSnapshotGetXMLDesc``, ``virDomainCheckpointGetXMLDesc``,
``virDomainBackupGetXMLDesc``); :func:`uncovered` compares.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

MomentKind = Literal["snapshot", "checkpoint", "backup"]

HINT = ("hotluks: libvirt snapshots or backups taken since the attach leave hotluks disks out "
        "(libvirt does not know them): copy those disks another way")


@dataclass(frozen=True)
class Moment:
    """One libvirt snapshot, checkpoint or backup job, and the disks it covers."""

    kind: MomentKind
    name: str
    #: creation time (Unix seconds, libvirt's ``creationTime``); None for backup jobs (libvirt keeps none)
    created: int | None
    disks: frozenset[str]
    #: "running" / "completed" for backup jobs, "" otherwise
    state: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "created": self.created, "state": self.state or None}

    def describe(self) -> str:
        if self.kind == "backup":
            if self.state == "running":
                return "a backup job running now"
            return "libvirt's last completed backup job (no time kept: it may predate the attach)"
        return f"{self.kind} {self.name!r} (created {self.created})"


def _root(xml: str, tag: str) -> Any:
    from lxml import etree

    try:
        root = etree.fromstring(xml.encode(), parser=etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError:
        return None
    return root if root.tag == tag else None


def _created(root: Any) -> int | None:
    text = (root.findtext("creationTime") or "").strip()
    return int(text) if text.isdigit() else None


def _covered(root: Any, attribute: str) -> frozenset[str]:
    """Targets of ``<disks><disk name=… attribute=…>`` whose attribute is not ``no``."""
    disks = root.find("disks")
    if disks is None:
        return frozenset()
    return frozenset(d.get("name", "") for d in disks.findall("disk") if d.get(attribute, "") != "no")


def parse_snapshot(xml: str) -> Moment | None:
    """A ``<domainsnapshot>``: its name, creation time and the disks it snapshots (internal or external)."""
    root = _root(xml, "domainsnapshot")
    if root is None:
        return None
    return Moment("snapshot", (root.findtext("name") or "").strip(), _created(root), _covered(root, "snapshot"))


def parse_checkpoint(xml: str) -> Moment | None:
    """A ``<domaincheckpoint>`` (``backup-begin`` with a checkpoint): the disks with a bitmap."""
    root = _root(xml, "domaincheckpoint")
    if root is None:
        return None
    return Moment("checkpoint", (root.findtext("name") or "").strip(), _created(root),
                  _covered(root, "checkpoint"))


def parse_backup(xml: str) -> Moment | None:
    """The ``<domainbackup>`` of the backup job running now: the disks it copies."""
    root = _root(xml, "domainbackup")
    if root is None:
        return None
    return Moment("backup", root.get("mode", "push"), None, _covered(root, "backup"), "running")


def completed_backup() -> Moment:
    """libvirt's last completed job was a backup: which disks it copied, libvirt no longer says."""
    return Moment("backup", "completed", None, frozenset(), "completed")


def uncovered(moments: Iterable[Moment], target: str, since: float) -> tuple[Moment, ...]:
    """The moments that leave ``target`` out and may postdate ``since`` (the attach's start, Unix time).

    Creation times are whole seconds: a moment of the attach's own second counts. Backup
    jobs carry no time: a running one leaves the disk out now; a completed one is listed
    too (libvirt keeps only the last, until ``virsh domjobinfo --completed`` reads it).
    """
    floor = math.floor(since)
    out = []
    for moment in moments:
        if target in moment.disks:
            continue
        if moment.created is not None and moment.created < floor:
            continue
        out.append(moment)
    return tuple(out)


__all__ = ["HINT", "Moment", "completed_backup", "parse_backup", "parse_checkpoint", "parse_snapshot", "uncovered"]
