"""VM command line: timeouts are finite and positive (exit 2 otherwise)."""

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
