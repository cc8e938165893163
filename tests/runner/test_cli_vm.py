"""VM command line: timeouts are finite and positive (exit 2 otherwise); early interrupts; resize sizes."""

from __future__ import annotations

import pytest

from hotluks.cli.main import main


@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "1e9", "soon"])
@pytest.mark.parametrize("command", [["attach", "vm", "disk.xml"], ["detach", "vm", "--target", "vdb"],
                                     ["repair", "vm"]])
def test_bad_timeouts_exit_2(command: list[str], value: str, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        code = main([*command, "--timeout", value])
    except SystemExit as exc:  # argparse: not a number at all
        code = exc.code  # type: ignore[assignment]
    assert code == 2 and "--timeout" in capsys.readouterr().err


def test_an_interrupt_before_the_event_loop_is_an_error_document(monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """SIGINT before a VM command's event loop runs: exit 2, and under --json a hotluks/1 error document."""
    import json

    import hotluks.cli.vm as vm_cli

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(vm_cli, "cmd_status", interrupted)
    assert main(["status", "unix:/nonexistent.sock", "--json"]) == 2
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert (doc["format"], doc["command"], doc["ok"], doc["error"]["exit_code"]) == ("hotluks/1", "status", False, 2)
    assert "nothing changed" in doc["error"]["message"] and "nothing changed" in out.err


@pytest.mark.parametrize("size", ["", "1X", "-", "1.5.5G"])
def test_resize_refuses_a_bad_size_before_connecting(size: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resize", "unix:/nonexistent.sock", "vdb", size]) == 2
    assert "invalid size" in capsys.readouterr().err
