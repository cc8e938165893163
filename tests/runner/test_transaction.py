"""The pure transaction core: undo derived from kind and name, presence, "as before", decisions."""

from __future__ import annotations

from pathlib import Path

import pytest

from hotluks.errors import ConflictError, RefusedError
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.runner import transaction as tx
from hotluks.runner.fdplan import FDSET_BASE, with_fd_passing
from hotluks.runner.journal import CorruptRecordError, Record
from hotluks.runner.vmstate import VMSnapshot


def _record(example_xml: Path, fds: bool = False) -> Record:
    plan = build_plan(Disk.from_xml(example_xml))
    if fds:
        plan = with_fd_passing(plan, {FDSET_BASE, 3})
    return Record.for_plan("vm", plan, vm_key="k", instance="i1", fingerprint="f1")


def _live(record: Record, *, drop: str = "", fd_tag: str | None = None) -> VMSnapshot:
    names = record.names
    fdsets = {int(s.name[6:]): frozenset({fd_tag if fd_tag is not None else s.arguments["opaque"]})
              for s in record.steps if s.kind == "fd"}
    return VMSnapshot(frozenset(names["node"] - {drop}), frozenset(names["secret"] - {drop}),
                      frozenset(names["device"] - {drop}), fdsets=fdsets)


def test_undo_is_derived_from_kind_and_name(example_xml: Path) -> None:
    record = _record(example_xml, fds=True)
    undo = [tx.undo_command(s) for s in record.steps]
    assert undo[0] == ("object-del", {"id": "hl-vdb-key"})
    assert ("remove-fd", {"fdset-id": FDSET_BASE + 1}) in undo and ("remove-fd", {"fdset-id": FDSET_BASE + 2}) in undo
    assert ("blockdev-del", {"node-name": "hl-vdb-luks"}) in undo and undo[-1] == ("device_del", {"id": "hl-vdb"})


def test_presence_order_and_as_before(example_xml: Path) -> None:
    record = _record(example_xml, fds=True)
    live = _live(record)
    order = tx.undo_order(record.steps, live)
    assert order == list(reversed(range(len(record.steps))))
    assert [record.steps[i].kind for i in order][:2] == ["device", "node"]
    foreign = _live(record, fd_tag="libvirt-fd")  # an fdset with that id that hotluks did not tag
    assert not any(tx.present(s, foreign) for s in record.steps if s.kind == "fd")
    empty = VMSnapshot(frozenset(), frozenset(), frozenset())
    before = VMSnapshot(frozenset({"libvirt-1-format"}), frozenset({"pc.ram"}), frozenset({"rp1"}))
    assert tx.verify(record, empty) == ""
    assert "missing nodes: libvirt-1-format" in tx.verify(record, empty, before)
    assert tx.verify(record, _live(record, drop="hl-vdb")).startswith("still present: ")


def test_status_and_decisions(example_xml: Path) -> None:
    record = _record(example_xml)
    record.status = "attached"
    assert tx.entry_status(record, _live(record), "i1") == ("attached", True)
    assert tx.entry_status(record, _live(record, drop="hl-vdb"), "i1") == ("attached", False)
    gone = VMSnapshot(frozenset(), frozenset(), frozenset())  # a new QEMU without the disk
    assert tx.entry_status(record, gone, "i2") == ("lost", False)
    assert tx.entry_status(record, _live(record), "") == ("attached", True)  # unknown instance: not lost
    assert tx.needs_repair("attached", False) and not tx.needs_repair("lost", False)
    assert tx.attach_start(None, "f1", "i1", "vdb") == "new"
    assert tx.attach_start(record, "f1", "i1", "vdb") == "already-attached"
    assert tx.attach_start(record, "f1", "i2", "vdb") == "replace-lost"
    with pytest.raises(ConflictError):
        tx.attach_start(record, "f2", "i1", "vdb")
    with pytest.raises(RefusedError, match="quarantines"):
        tx.attach_start(CorruptRecordError("bad"), "f1", "i1", "vdb")
    record.status = "needs-repair"
    with pytest.raises(RefusedError, match="repair"):
        tx.attach_start(record, "f1", "i1", "vdb")
    assert tx.repair_step(record, "i1") == "undo" and tx.repair_step(record, "i2") == "forget"
    record.status = "attached"
    assert tx.repair_step(record, "i2") == "keep-lost" and tx.repair_step(record, "i1") == "keep-attached"
    outcome = tx.UndoOutcome(("device_del hl-vdb",), ("did not release",), True, "")
    assert not outcome.clean and outcome.status() == "detaching"
    assert isinstance(tx.incomplete("x", outcome), tx.UnplugPendingError)
    assert tx.incomplete("x", outcome).exit_code == 3


def test_a_disk_the_definition_brought_back_is_attached_not_lost(example_xml: Path) -> None:
    """After `hotluks persist` and a restart, the new QEMU has the disk's objects, nodes and device by
    name (not the old process's descriptors or guard): attached, kept by repair, detachable."""
    from hotluks.runner.guardplan import with_migration_guard

    plan = with_migration_guard(with_fd_passing(build_plan(Disk.from_xml(example_xml)), set()), "/g.vdi", set())
    record = Record.for_plan("vm", plan, vm_key="k", instance="i1", fingerprint="f1")
    record.status = "attached"
    names = record.names
    restarted = VMSnapshot(frozenset(names["node"] - {"hlg-vdb"}), frozenset(names["secret"]),
                           frozenset(names["device"]))  # no fdsets, no guard
    assert tx.carried(record, restarted) and tx.entry_status(record, restarted, "i2") == ("attached", True)
    assert tx.missing(record, restarted, "i2") == [] and tx.missing(record, restarted, "i1") != []
    assert tx.repair_step(record, "i2", is_carried=True) == "keep-attached"
    assert tx.attach_start(record, "f1", "i2", "vdb", is_carried=True) == "already-attached"
    empty = VMSnapshot(frozenset(), frozenset(), frozenset())
    assert not tx.carried(record, empty) and tx.entry_status(record, empty, "i2") == ("lost", False)
    partly = VMSnapshot(frozenset(names["node"]), frozenset(), frozenset(names["device"]))
    assert not tx.carried(record, partly)  # a secret object missing: not the disk as recorded
