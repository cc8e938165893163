"""Which libvirt snapshots, checkpoints and backups leave a hotluks disk out (pure parsing and comparison)."""

from __future__ import annotations

from hotluks.lifecycle.coverage import (
    Moment,
    completed_backup,
    parse_backup,
    parse_checkpoint,
    parse_snapshot,
    uncovered,
)

# the shapes libvirt 11.3 prints (virsh snapshot-dumpxml / checkpoint-dumpxml / backup-dumpxml), abridged
DISK_ONLY = """<domainsnapshot>
  <name>d1</name>
  <state>disk-snapshot</state>
  <creationTime>1796440059</creationTime>
  <memory snapshot='no'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'><source file='/x/vda.d1'/></disk>
    <disk name='vdc' snapshot='no'/>
  </disks>
  <domain type='qemu'><devices><disk type='file' device='disk'><target dev='vdb' bus='virtio'/></disk></devices></domain>
</domainsnapshot>"""
CHECKPOINT = """<domaincheckpoint>
  <name>c1</name>
  <creationTime>1796440100</creationTime>
  <disks><disk name='vda' checkpoint='bitmap' bitmap='c1'/><disk name='vdc' checkpoint='no'/></disks>
</domaincheckpoint>"""
BACKUP = """<domainbackup mode='push'>
  <disks><disk name='vda' backup='yes' type='file'><target file='/x/bk.qcow2'/></disk>
  <disk name='vdc' backup='no'/></disks>
</domainbackup>"""


def test_parses_libvirt_xml() -> None:
    snap = parse_snapshot(DISK_ONLY)
    assert snap == Moment("snapshot", "d1", 1796440059, frozenset({"vda"}))  # the nested <domain> is not read
    assert parse_checkpoint(CHECKPOINT) == Moment("checkpoint", "c1", 1796440100, frozenset({"vda"}))
    assert parse_backup(BACKUP) == Moment("backup", "push", None, frozenset({"vda"}), "running")
    assert parse_snapshot(CHECKPOINT) is None and parse_backup("<oops") is None


def test_uncovered_by_time_and_target() -> None:
    snap = parse_snapshot(DISK_ONLY)
    assert snap is not None
    assert uncovered([snap], "vdb", 1796440059.9) == (snap,)  # the attach's own second counts
    assert uncovered([snap], "vdb", 1796440060.0) == ()  # taken before the attach
    assert uncovered([snap], "vda", 1796440000.0) == ()  # libvirt's own disk is in it
    assert uncovered([snap], "vdc", 1796440000.0) == (snap,)  # snapshot='no'
    running, done = parse_backup(BACKUP), completed_backup()
    assert running is not None
    assert uncovered([running, done], "vdb", 2e9) == (running, done)  # backup jobs carry no time


def test_json_and_text() -> None:
    snap = parse_snapshot(DISK_ONLY)
    assert snap is not None
    assert snap.to_json() == {"kind": "snapshot", "name": "d1", "created": 1796440059, "state": None}
    assert completed_backup().to_json() == {"kind": "backup", "name": "completed", "created": None,
                                           "state": "completed"}
    assert "snapshot 'd1'" in snap.describe()
    assert "may predate the attach" in completed_backup().describe()
