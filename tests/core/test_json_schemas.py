"""Every ``--json`` output is one documented, versioned shape: validated against hotluks/schemas/*.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from hotluks.cli.jsoncheck import schemas
from hotluks.cli.output import FORMAT, envelope
from hotluks.runner.results import AttachResult, DetachResult, RepairAction, StatusEntry, StatusItem, StepReport
from testsupport.schemas import validate

KEY = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def test_schemas_are_valid_and_cover_the_commands() -> None:
    for doc in schemas().values():
        jsonschema.Draft202012Validator.check_schema(doc)
    assert set(schemas()) >= {"plan.json", "cold-cmdline.json", "example.json", "attach.json", "detach.json",
                            "status.json", "repair.json", "luks-dump.json", "error.json", "resize.json", "rotate.json"}


def test_plan_and_cold_cmdline_outputs(example: Path, cli: Any, tmp_path: Path) -> None:
    plan = cli("plan", str(example), "--json")
    validate("plan", json.loads(plan.out))
    secrets = [f"--secret={k}={tmp_path / 'k'}" for k in (KEY, "usb-stick", "ceph-client", "chap",
                                                           "0a81f5b2-8403-7b23-c8d6-21ccc2f80fb0",
                                                           "0a81f5b2-8403-7b23-c8d6-21ccc2f80d70",
                                                           "0a81f5b2-8403-7b23-c8d6-21ccc2f80d71")]
    cold = cli("cold-cmdline", str(example), "--json", *secrets)
    doc = json.loads(cold.out)
    validate("cold-cmdline", doc)
    if cold.code == 0:
        assert doc["ok"] and doc["argv"][0] in ("-object", "-blockdev")


def test_global_json_after_and_before(cli: Any, example: Path) -> None:
    before = json.loads(cli("--json", "plan", str(example)).out)
    after = json.loads(cli("plan", str(example), "--json").out)
    assert before == after
    validate("plan", before)


def test_example_list(cli: Any) -> None:
    validate("example", json.loads(cli("example", "--list", "--json").out))


def test_errors_are_json_too(cli: Any, tmp_path: Path) -> None:
    missing = cli("attach", "unix:/nonexistent.sock", str(tmp_path / "missing.xml"), "--json")
    doc = json.loads(missing.out)
    assert missing.code == 2 and doc["ok"] is False and "no such file" in doc["error"]["message"]
    validate("attach", doc)
    not_luks = tmp_path / "plain.img"
    not_luks.write_bytes(b"\0" * 4096)
    dump = cli("luks", "dump", str(not_luks), "--json")
    doc = json.loads(dump.out)
    assert dump.code == 2 and doc["error"]["type"].startswith("Luks")
    validate("luks dump", doc)
    bad_plan = cli("plan", "--json", str(tmp_path / "missing.xml"))
    validate("plan", json.loads(bad_plan.out))


def test_runner_results_in_the_envelope() -> None:
    """attach/detach/status/repair payloads of the runner, wrapped as the CLI must print them."""
    attach = AttachResult("vm1", "vdb", "hl-vdb", "hl-vdb-luks", "attached-luks", "passed", dry_run=False,
                          steps=[StepReport("object-add", "hl-vdb-key", 0.001)])
    validate("attach", envelope("attach", attach.to_json()))
    dry = AttachResult("vm1", "vdb", "hl-vdb", "hl-vdb-luks", "attached-luks", "skipped", dry_run=True,
                       commands=[{"execute": "device_add", "arguments": {"id": "hl-vdb", "drive": "x"}}])
    validate("attach", envelope("attach", dry.to_json()))
    validate("detach", envelope("detach", DetachResult("vm1", "vdb", "hl-vdb", ["hl-vdb"], 0.5).to_json()))
    entry = StatusEntry("vdb", "hl-vdb", "attached-luks", "attached", True, False, None,
                        (StatusItem("node", "hl-vdb-luks", True),), header_fingerprint="ab" * 32)
    validate("status", envelope("status", {"vm": "vm1", "disks": [entry.to_json()]}))
    from hotluks.lifecycle.coverage import Moment, completed_backup

    missed = StatusEntry("vdb", "hl-vdb", "attached-luks", "attached", True, False,
                         not_covered=(Moment("snapshot", "d1", 1796440059, frozenset({"vda"})), completed_backup()))
    validate("status", envelope("status", {"vm": "vm1", "disks": [missed.to_json()]}))
    repair = {"vm": "vm1", "actions": [RepairAction("vdb", "finished detach", ("hl-vdb",)).to_json()]}
    validate("repair", envelope("repair", repair))
    from hotluks.runner.resize import ResizeResult

    validate("resize", envelope("resize", ResizeResult("vm1", "vdb", "hl-vdb", "hl-vdb-luks", 1 << 20, 2 << 20,
                                                       0.01).to_json()))
    from hotluks.headers.rotate import RotateResult

    rotated = RotateResult("vdb", "/h.img", "/state/backups/h.img", 0, 1, "cd" * 32, False, 0.4)
    validate("rotate", envelope("rotate", rotated.to_json()))  # its kebab keys come out snake_case


def test_demo_report_in_the_envelope_keeps_its_verdict() -> None:
    from hotluks.demo import DemoReport, DemoStep

    failed = DemoReport(steps=[DemoStep("guest reads plaintext", 1.5, ok=False, detail="mismatch")], error="boom")
    doc = envelope("demo", failed.to_json())
    validate("demo", doc)
    assert doc["ok"] is False
    passed = DemoReport(steps=[DemoStep("attach", 0.2, ok=True, lines=["7 QMP steps"])])
    assert envelope("demo", passed.to_json())["ok"] is True


@pytest.mark.parametrize("command", ["plan", "attach", "luks dump"])
def test_an_unknown_key_is_refused_by_the_schema(command: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        validate(command, {"format": FORMAT, "command": command, "ok": True, "top-node": "x"})


def test_usage_errors_are_json_under_json(cli: Any) -> None:
    with pytest.raises(SystemExit) as info:
        cli("attach", "--json")
    assert info.value.code == 2


def test_usage_error_document(capsys: pytest.CaptureFixture[str]) -> None:
    from hotluks.cli.main import main

    with pytest.raises(SystemExit):
        main(["luks", "dump", "--json"])
    doc = json.loads(capsys.readouterr().out)
    validate("luks dump", doc)
    assert doc["error"]["exit_code"] == 2 and "DEVICE" in doc["error"]["message"]


def test_luks_fingerprint_output(cli: Any, tmp_path: Path) -> None:
    from hotluks import luks

    payload, header = tmp_path / "payload.raw", tmp_path / "header.img"
    payload.write_bytes(bytes(1 << 20))
    luks.format_volume(payload, b"pass", type="luks1", header=header,
                       kdf=luks.make_kdf("pbkdf2", iterations=1000), key_size=256)
    done = cli("luks", "fingerprint", str(payload), "--header", str(header), "--json")
    doc = json.loads(done.out)
    validate("luks fingerprint", doc)
    assert done.code == 0 and doc["fingerprint"] == luks.fingerprint.fingerprint(luks.open_header(header)).value
    missing = cli("luks", "fingerprint", str(tmp_path / "nope"), "--json")
    assert missing.code == 2
    validate("luks fingerprint", json.loads(missing.out))
