"""``HOTLUKS_JSON_CHECK``: every printed ``--json`` document is checked against its shipped schema.

The root pytest plugin (testsupport/json_check.py) sets the variable for the whole session, so
every test that runs the CLI checks its documents; these tests show the mechanism itself, and
that every shipped schema is exercised by a real document of the CLI (success or error).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.cli.jsoncheck import ENV, schemas
from hotluks.cli.main import main
from hotluks.cli.output import FORMAT, write
from testsupport.json_check import exercised

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "xml" / "examples" / "qemu-doc-detached-qcow2.xml"


@pytest.fixture
def log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A log of this test's own; what it holds is added to the session's log afterwards (its summary)."""
    session = os.environ.get(ENV)
    path = tmp_path / "json-check.log"
    monkeypatch.setenv(ENV, str(path))
    yield path
    if session and path.exists():
        with open(session, "a") as out:
            out.write(path.read_text())


def test_the_session_sets_the_variable() -> None:
    assert os.environ.get(ENV)


def test_a_valid_document_is_printed_and_logged(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write({"format": FORMAT, "command": "example", "ok": True, "examples": ["a"]})
    assert json.loads(capsys.readouterr().out)["examples"] == ["a"]
    assert log.read_text() == "example\texample.json\n"
    write({"format": FORMAT, "command": "example", "ok": False,
           "error": {"type": "InputError", "message": "no", "exit_code": 2}})
    assert log.read_text().splitlines()[1] == "example\texample.json error.json"


@pytest.mark.parametrize("doc", [
    {"format": FORMAT, "command": "example", "ok": True, "examples": ["a"], "top-node": "x"},  # unknown key
    {"format": FORMAT, "command": "plan", "ok": True},  # required keys missing
    {"format": FORMAT, "command": "serve", "ok": True},  # no schema: only error documents allowed
    {"format": FORMAT, "ok": True},  # no command
], ids=["unknown-key", "missing-keys", "no-schema", "no-command"])
def test_an_invalid_document_is_not_printed_and_exits_70(doc: dict[str, Any], log: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        write(doc)
    out, err = capsys.readouterr()
    assert info.value.code == 70 and out == "" and not log.exists()
    assert err.startswith("hotluks: internal error: ") and ENV in err


def test_a_command_without_schema_may_print_its_error_document(log: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--json", "no-such-command"])  # argparse's usage error, as command "hotluks"
    assert info.value.code == 2
    assert json.loads(capsys.readouterr().out)["command"] == "hotluks"
    assert log.read_text() == "hotluks\terror.json\n"


def test_without_jsonschema_it_says_so_and_prints(log: Path, capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "jsonschema", None)  # import jsonschema → ModuleNotFoundError
    write({"format": FORMAT, "command": "plan", "ok": True})
    out, err = capsys.readouterr()
    assert json.loads(out)["command"] == "plan" and "jsonschema is not installed" in err
    assert not log.exists()


def test_a_cli_process_inherits_the_check(log: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "hotluks", "example", "--list", "--json"], capture_output=True,
                          timeout=30, cwd=REPO, check=True)
    assert json.loads(proc.stdout)["ok"] and log.read_text() == "example\texample.json\n"


def _luks_documents(tmp: Path, run: Any) -> None:
    """A real volume through every ``luks`` action that prints a document."""
    payload, header, key, new = tmp / "payload.raw", tmp / "header.img", tmp / "key", tmp / "new"
    payload.write_bytes(bytes(1 << 20))
    key.write_bytes(b"first passphrase")
    new.write_bytes(b"second passphrase")
    dev = [str(payload), "--header", str(header)]
    fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    doc = run(0, "luks", "format", *dev, "--type", "luks1", "--key-size", "256", "--key-file", str(key), *fast)
    assert (doc["type"], doc["key_bits"], doc["keyslot"], doc["header"]) == ("luks1", 256, 0, str(header))
    assert run(0, "luks", "verify", *dev, "--key-file", str(key))["keyslot"] == 0
    wrong = run(1, "luks", "verify", *dev, "--key-file", str(new))
    assert wrong["error"]["exit_code"] == 1 and wrong["error"]["type"] == "WrongPassphraseError"
    assert run(0, "luks", "add-key", *dev, "--key-file", str(key), str(new), *fast)["keyslot"] == 1
    plain = tmp / "plain"
    plain.write_bytes(b"x" * 4096)
    assert run(0, "luks", "encrypt", str(plain), *dev, "--key-file", str(key))["bytes"] == 4096
    out = tmp / "out"
    assert run(0, "luks", "decrypt", *dev[:1], str(out), *dev[1:], "--key-file", str(new))["bytes"] == 1 << 20
    assert out.read_bytes()[:4096] == b"x" * 4096
    refused = run(2, "luks", "decrypt", *dev[:1], "-", *dev[1:], "--key-file", str(new))
    assert "give OUT as a file" in refused["error"]["message"]
    assert run(0, "luks", "remove-key", *dev, "--key-file", str(new))["keyslot"] == 1
    backup = tmp / "backup"
    saved = run(0, "luks", "header-backup", *dev, "--header-backup-file", str(backup))
    restored = run(0, "luks", "header-restore", *dev, "--header-backup-file", str(backup))
    assert restored["fingerprint"] == saved["fingerprint"] == restored["previous"] and not restored["forced"]
    assert run(0, "luks", "dump", *dev)["version"] == 1
    assert run(0, "luks", "fingerprint", *dev)["fingerprint"] == saved["fingerprint"]
    assert run(2, "luks", "dump", str(plain))["error"]["type"].startswith("Luks")
    luks2 = [str(payload), "--header", str(tmp / "luks2-header.img")]
    run(0, "luks", "format", *luks2, "--type", "luks2", "--key-file", str(key), *fast)
    assert run(0, "luks", "dump", *luks2)["keyslots_size"] > 0  # LUKS2's own fields fit the schema too


def test_every_schema_is_exercised_by_a_real_document(log: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Each shipped schema validates at least one document the CLI printed; errors included."""

    def run(code: int, *argv: str) -> dict[str, Any]:
        try:
            got = main([*argv, "--json"])
        except SystemExit as exc:  # argparse's usage errors
            got = exc.code  # type: ignore[assignment]
        out, err = capsys.readouterr()
        assert got == code, (argv, out, err)
        doc: dict[str, Any] = json.loads(out)
        assert doc["ok"] is (code == 0), doc
        return doc

    state = ["--state-dir", str(tmp_path / "state")]
    nowhere = "unix:" + str(tmp_path / "no-qemu.sock")
    missing = str(tmp_path / "missing.xml")
    run(0, "plan", str(EXAMPLE))
    run(2, "plan", missing)
    run(0, "example", "--list")
    run(2, "cold-cmdline", missing)
    run(0, "status", "--all", *state)
    run(0, "repair", "--all", *state)
    run(2, "attach", nowhere, missing, *state)
    for command in (["detach", nowhere, "--target", "vdb"], ["status", nowhere], ["repair", nowhere],
                    ["resize", nowhere, "vdb", "2G"]):
        assert run(2, *command, *state)["error"]["exit_code"] == 2
    run(2, "placement", nowhere, "--target", "vdb")
    run(2, "rotate", nowhere, missing, "--new-key-file", missing, *state)
    run(2, "persist", "no-such-domain", missing, "--connect", "test:///nonexistent")
    assert run(2, "demo", "--no-such-option")["command"] == "demo"  # the top parser's usage error, named
    assert run(2, "luks", "dump", missing, "--no-such-option")["command"] == "luks dump"
    _luks_documents(tmp_path, run)
    seen = exercised(log)
    assert set(schemas()) - set(seen) == set()
    assert set(seen) - set(schemas()) == set()
