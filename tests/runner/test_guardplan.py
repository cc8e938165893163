"""The migration guard as planned steps: first, in a free fdset, undone last, accepted by the journal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.runner import transaction as tx
from hotluks.runner.fdplan import FDSET_BASE, with_fd_passing
from hotluks.runner.guardplan import with_migration_guard
from hotluks.runner.journal import Record, validate
from hotluks.runner.vmstate import VMSnapshot


def _guarded(example_xml: Path) -> Record:
    plan = with_fd_passing(build_plan(Disk.from_xml(example_xml)), {FDSET_BASE})
    plan = with_migration_guard(plan, "/var/lib/hotluks/guard.vdi", {FDSET_BASE, 7})
    return Record.for_plan("vm", plan, vm_key="k", instance="i1")


def test_the_guard_comes_first_in_a_free_fdset_and_is_undone_last(example_xml: Path) -> None:
    record = _guarded(example_xml)
    fd, node = record.steps[:2]
    used = {s.arguments["fdset-id"] for s in record.steps[2:] if s.kind == "fd"}
    assert fd.kind == "fd" and fd.arguments["fdset-id"] not in used | {FDSET_BASE, 7}
    assert fd.arguments["opaque"] == "hotluks:hlg-vdb"
    assert node.name == "hlg-vdb" and node.arguments["file"]["filename"] == f"/dev/fdset/{fd.arguments['fdset-id']}"
    assert node.arguments["driver"] == "vdi" and node.arguments["read-only"]
    assert [tx.undo_command(s) for s in record.steps[:2]] == [
        ("remove-fd", {"fdset-id": fd.arguments["fdset-id"]}), ("blockdev-del", {"node-name": "hlg-vdb"})]
    names = record.names
    fdsets = {int(s.name[6:]): frozenset({s.arguments["opaque"]}) for s in record.steps if s.kind == "fd"}
    live = VMSnapshot(frozenset(names["node"]), frozenset(names["secret"]), frozenset(names["device"]), fdsets=fdsets)
    order = tx.undo_order(record.steps, live)
    assert order[-2:] == [1, 0]  # the VM stays guarded until the device and the disk's nodes are gone
    assert "hlg-vdb" in tx.leftovers(record, live)


def test_the_journal_accepts_the_guard_of_its_own_target_only(example_xml: Path) -> None:
    record = _guarded(example_xml)
    doc = json.loads(json.dumps(record.to_json()))
    assert validate(doc).steps[1].name == "hlg-vdb"
    other = json.loads(json.dumps(doc))
    other["steps"][1]["name"] = other["steps"][1]["arguments"]["node-name"] = "hlg-vdc"
    with pytest.raises(ValueError, match="not a name hotluks gives target vdb"):
        validate(other)
    prefix = json.loads(json.dumps(doc))
    prefix["steps"][1]["name"] = prefix["steps"][1]["arguments"]["node-name"] = "hlg-vdb-x"
    with pytest.raises(ValueError, match="not a name hotluks gives"):
        validate(prefix)
    tag = json.loads(json.dumps(doc))
    tag["steps"][0]["arguments"]["opaque"] = "hotluks:hlg-vdc"
    with pytest.raises(ValueError, match="not tagged for target vdb"):
        validate(tag)
