"""Every ``--json`` document attach/detach/status/repair print against a real QEMU is a hotluks/1
document that validates against its published schema — successes, dry runs, no-ops and errors
(refusals: exit 2, rollbacks: exit 1) alike; the error document says what stderr says."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.schemas import validate
from testsupport.vms import Monitor, Snapshot, journal_files, leaks, make_disk, run_cli

pytestmark = pytest.mark.qemu

def run_json(command: str, *args: str | Path, code: int = 0) -> dict[str, Any]:
    """``hotluks COMMAND ARGS --json``: the exit code is ``code`` and stdout one valid hotluks/1 document."""
    proc = run_cli(command, *args, "--json")
    assert proc.returncode == code, (command, proc.stdout, proc.stderr)
    doc: dict[str, Any] = json.loads(proc.stdout)
    validate(command, doc)
    assert (doc["format"], doc["command"], doc["ok"]) == ("hotluks/1", command, code == 0 or (command, code) == ("status", 3))
    if "error" in doc and isinstance(doc["error"], dict):
        assert doc["error"]["exit_code"] == code
        assert proc.stderr.strip().endswith(doc["error"]["message"]), proc.stderr
    return doc


def test_attach_detach_status_repair_documents(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                               tmp_path: Path, state_dir: Path) -> None:
    qmp = f"unix:{vm.qmp_path}"
    state = ("--state-dir", str(state_dir))
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    other = make_disk(tmp_path / "other", "attached-luks", "vdc")

    assert run_json("status", qmp, *state)["disks"] == []
    assert run_json("repair", qmp, *state)["actions"] == []
    dry = run_json("attach", qmp, disk.xml_path, *disk.cli_secret(), *state, "--dry-run")
    assert dry["dry_run"] and dry["commands"] and dry["steps"] == []
    done = run_json("attach", qmp, disk.xml_path, *disk.cli_secret(), *state)
    assert done["top_node"] == "hl-vdb-luks" and len(done["steps"]) == 7 and not done["already_attached"]
    assert run_json("attach", qmp, disk.xml_path, *disk.cli_secret(), *state)["already_attached"]
    (entry,) = run_json("status", qmp, *state)["disks"]
    assert (entry["target"], entry["status"], entry["consistent"]) == ("vdb", "attached", True)

    # refusals before anything is sent: exit 2
    wrong = tmp_path / "wrong.pass"
    wrong.write_bytes(b"not-the-passphrase")
    refused = run_json("attach", qmp, other.xml_path, "--secret", f"{other.secret_key}={wrong}", *state, code=2)
    assert refused["error"]["type"] == "PreflightFailed"
    assert run_json("attach", qmp, tmp_path / "missing.xml", *state, code=2)["error"]["type"] == "InvalidDisk"
    clash = other.xml_path.read_text().replace("dev='vdc'", "dev='vdb'")
    (tmp_path / "clash.xml").write_text(clash)
    conflict = run_json("attach", qmp, tmp_path / "clash.xml", *other.cli_secret(), *state, code=2)
    assert conflict["error"]["type"] == "Conflict"
    gone = run_json("status", f"unix:{tmp_path / 'nobody.sock'}", *state, code=2)
    assert gone["error"]["type"] in ("DomainNotFound", "NotRunning")
    # after the first step: a verified rollback, exit 1
    rolled = run_json("attach", qmp, other.xml_path, "--secret", f"{other.secret_key}={wrong}", *state,
                      "--no-preflight", code=1)
    assert rolled["error"]["type"] == "RolledBack" and "rolled back" in rolled["error"]["message"]

    # an interrupted detach (recorded as such) is finished by repair
    (record,) = [p for p in journal_files(state_dir) if p.name == "vdb.json"]
    with record.open("a") as f:
        f.write(json.dumps({"status": "detaching"}) + "\n")
    (pending,) = run_json("status", qmp, *state, code=3)["disks"]
    assert pending["status"] == "detaching" and pending["needs_repair"]
    (action,) = run_json("repair", qmp, *state)["actions"]
    assert action["action"] == "finished detach" and action["undone"][0] == "device_del hl-vdb"
    absent = run_json("detach", qmp, "--target", "vdb", *state)
    assert absent["already_absent"] and absent["device"] == ""

    again = run_json("attach", qmp, other.xml_path, *other.cli_secret(), *state)
    detached = run_json("detach", qmp, other.xml_path, *state, "--timeout", "10")
    assert detached["removed"][0] == "device_del hl-vdc" and detached["device"] == again["device"]

    # a corrupt record: status shows it (device and shape unknown), repair quarantines it
    record.write_text("{not json")
    (corrupt,) = run_json("status", qmp, *state, code=3)["disks"]
    assert (corrupt["status"], corrupt["device"]) == ("corrupt", "")
    assert [a["action"] for a in run_json("repair", qmp, *state)["actions"]] == ["quarantined"]
    assert monitor.snapshot() == initial


def test_usage_errors_are_documents_too(tmp_path: Path) -> None:
    proc = run_cli("detach", "unix:/nonexistent.sock", "--json")  # neither DISK.xml nor --target
    assert proc.returncode == 2
    doc = json.loads(proc.stdout)
    validate("detach", doc)
    assert doc["ok"] is False and doc["error"]["exit_code"] == 2
    assert doc["command"] == "detach"


def test_no_secret_in_json_documents(vm: QemuProcess, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    qmp = f"unix:{vm.qmp_path}"
    outputs: list[subprocess.CompletedProcess[str]] = []
    for args in (("attach", qmp, disk.xml_path, *disk.cli_secret(), "--dry-run"),
                 ("attach", qmp, disk.xml_path, *disk.cli_secret()), ("status", qmp), ("repair", qmp),
                 ("detach", qmp, "--target", "vdb")):
        proc = run_cli(*args, "--state-dir", state_dir, "--json")
        assert proc.returncode == 0, proc.stderr
        outputs.append(proc)
    assert not leaks(disk.passphrase, [p.stdout + p.stderr for p in outputs])
