"""Journal records: round trip, atomic replacement, corruption, stale temporaries, no secrets."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from hotluks.errors import HotluksError
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.runner.journal import Journal, Record, default_state_dir, vm_dirname


def _record(example_xml: Path) -> Record:
    return Record.for_plan("/run/vm1.qmp", build_plan(Disk.from_xml(example_xml)))


def test_round_trip(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "qmp-/run/vm1.qmp")
    record = _record(example_xml)
    record.steps[0].state = "done"
    record.steps[1].state = "started"
    record.error = "step 2 failed"
    journal.save(record)
    loaded = journal.load("vdb")
    assert loaded == record
    assert [s.kind for s in loaded.steps] == ["secret", "node", "node", "node", "node", "node", "device"]
    assert loaded.names == {"secret": {"hl-vdb-key"}, "device": {"hl-vdb"},
                            "node": {"hl-vdb-hdr-proto", "hl-vdb-hdr-fmt", "hl-vdb-proto", "hl-vdb-fmt",
                                     "hl-vdb-luks"}}
    assert [r.target for r in journal.records()] == ["vdb"]
    assert stat.S_IMODE(journal.dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(journal.path("vdb").stat().st_mode) == 0o600
    journal.remove("vdb")
    assert journal.load("vdb") is None and list(journal.records()) == []
    journal.remove("vdb")  # idempotent


def test_record_holds_no_secret_value(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "vm")
    journal.save(_record(example_xml))
    doc = json.loads(journal.path("vdb").read_text())
    key_step = doc["steps"][0]
    assert key_step["execute"] == "object-add" and "data" not in key_step["arguments"]


def test_save_is_atomic_when_interrupted(tmp_path: Path, example_xml: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash while writing the new version leaves the old version intact and loadable."""
    journal = Journal(tmp_path, "vm")
    record = _record(example_xml)
    journal.save(record)
    before = journal.path("vdb").read_bytes()

    real_write = os.write

    def crash(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[: len(data) // 2]))  # half of the new version reaches the file
        raise OSError(5, "simulated crash while writing")

    monkeypatch.setattr(os, "write", crash)
    record.steps[0].state = "done"
    with pytest.raises(OSError):
        journal.save(record)
    monkeypatch.undo()
    assert journal.path("vdb").read_bytes() == before
    assert journal.load("vdb") == Record.from_json(json.loads(before))
    # the failed temporary is removed at once; one a SIGKILL leaves behind is never read as a record
    assert sorted(p.name for p in journal.dir.iterdir()) == ["vdb.json"]
    (journal.dir / ".vdb.json.k3y9x_ab.tmp").write_text("half")
    assert [r.target for r in journal.records()] == ["vdb"]
    assert journal.remove_stale_temporaries() == [".vdb.json.k3y9x_ab.tmp"]
    assert sorted(p.name for p in journal.dir.iterdir()) == ["vdb.json"]


def test_corrupt_record_is_a_clear_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path, "vm")
    journal.ensure()
    journal.path("vdb").write_text('{"vm": "x", "steps": [')
    with pytest.raises(HotluksError, match="corrupt"):
        journal.load("vdb")


def test_state_dir_unwritable_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(HotluksError, match="cannot create state directory"):
        Journal(blocker, "vm").ensure()


def test_default_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOTLUKS_STATE_DIR", str(tmp_path))
    assert default_state_dir() == tmp_path
    monkeypatch.delenv("HOTLUKS_STATE_DIR")
    assert default_state_dir() == (Path("/var/lib/hotluks") if os.geteuid() == 0
                                   else Path.home() / ".local/state/hotluks")


def test_vm_dirname() -> None:
    name = vm_dirname("qmp-/run/vms/db 1.qmp")
    assert name.startswith("qmp-_run_vms_db_1.qmp-") and len(name.split("-")[-1]) == 12
    assert "/" not in name and " " not in name
    # names that sanitize alike stay distinct; the same key is stable
    assert vm_dirname("libvirt-a/b") != vm_dirname("libvirt-a_b")
    assert vm_dirname("libvirt-a/b") == vm_dirname("libvirt-a/b")
    long = vm_dirname("libvirt-" + "x" * 500)
    assert len(long) <= 60 + 13
    assert vm_dirname("libvirt-" + "x" * 500) != vm_dirname("libvirt-" + "x" * 501)
    for hostile in ("..", "../..", "/", "", "a/../../etc"):
        name = vm_dirname(hostile)
        assert "/" not in name and name not in ("", ".", "..")  # always one safe path component


def test_step_marks_are_appended_and_replayed(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "vm")
    record = _record(example_xml)
    journal.save(record)
    size = journal.path("vdb").stat().st_size
    journal.mark(record, 0, "started")
    journal.mark(record, 1, "started")
    journal.mark(record, 1, "undone")
    lines = journal.path("vdb").read_text().splitlines()
    assert len(lines) == 4 and journal.path("vdb").stat().st_size > size  # appended, not rewritten
    assert journal.load("vdb") == record
    assert [s.state for s in record.steps[:3]] == ["started", "undone", "pending"]
    journal.save(record)  # a full save compacts the changes into the first line
    assert len(journal.path("vdb").read_text().splitlines()) == 1 and journal.load("vdb") == record


def test_a_mark_cut_short_by_a_kill_is_ignored(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "vm")
    record = _record(example_xml)
    journal.save(record)
    journal.mark(record, 0, "started")
    with open(journal.path("vdb"), "a") as fh:
        fh.write('{"step":1,"sta')  # killed mid-append
    loaded = journal.load("vdb")
    assert loaded is not None and [s.state for s in loaded.steps[:2]] == ["started", "pending"]
    with open(journal.path("vdb"), "a") as fh:
        fh.write('\n{"step":2,"state":"started"}\n')  # garbage in the middle is corruption, not a kill
    with pytest.raises(HotluksError, match="corrupt at line 3"):
        journal.load("vdb")


def test_mark_without_a_file_saves_the_whole_record(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "vm")
    record = _record(example_xml)
    journal.mark(record, 0, "started")
    assert journal.load("vdb") == record


def test_reads_a_record_written_as_one_indented_document(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "vm")
    record = _record(example_xml)
    journal.ensure()
    journal.path("vdb").write_text(json.dumps(record.to_json(), indent=1))
    assert journal.load("vdb") == record


def test_status_changes_are_appended_and_replayed(tmp_path: Path, example_xml: Path) -> None:
    journal = Journal(tmp_path, "vm")
    record = _record(example_xml)
    journal.save(record)
    journal.mark(record, 6, "started")
    journal.set_status(record, "attached")
    loaded = journal.load("vdb")
    assert loaded is not None and loaded.status == "attached" and loaded.steps[6].state == "started"


def test_every_recheck_refuses_what_the_first_check_refuses(tmp_path: Path) -> None:
    """``ensure(recheck=True)`` on a journal already trusted (one walk up) still refuses a loosened state
    directory, a loosened or symlinked VM directory, and recreates a removed one."""
    from hotluks.runner.statedir import UntrustedStateDirError

    state = tmp_path / "state"
    journal = Journal(state, "vm")
    journal.ensure()
    for target, mode in ((state, 0o770), (journal.dir, 0o777)):
        os.chmod(target, mode)
        with pytest.raises(UntrustedStateDirError, match="writable by group or others"):
            journal.ensure(recheck=True)
        os.chmod(target, 0o700)
        journal.ensure(recheck=True)
    journal.dir.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    journal.dir.symlink_to(elsewhere)
    with pytest.raises(HotluksError):
        journal.ensure(recheck=True)
    journal.dir.unlink()
    journal.ensure(recheck=True)
    assert journal.dir.is_dir() and stat.S_IMODE(journal.dir.stat().st_mode) == 0o700
