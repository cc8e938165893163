"""Shared fixtures for the core (parse → plan → render) unit tests."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hotluks.cli.main import main

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "xml" / "examples").glob("*.xml"))
GOLDEN = Path(__file__).resolve().parent / "golden"


@dataclass
class CliResult:
    code: int
    out: str
    err: str
    seconds: float


CliRunner = Callable[..., CliResult]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "example" in metafunc.fixturenames:
        metafunc.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])


@pytest.fixture
def golden_dir() -> Path:
    return GOLDEN


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> CliRunner:
    """Run ``hotluks ARGS`` in-process (fast); returns exit code, stdout, stderr."""

    def run(*argv: str) -> CliResult:
        start = time.monotonic()
        code = main(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err, time.monotonic() - start)

    return run


@pytest.fixture
def cli_process() -> CliRunner:
    """Run ``python -m hotluks ARGS`` as a real process (what operators run)."""

    def run(*argv: str, stdin: bytes | None = None, timeout: float = 20.0) -> CliResult:
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hotluks", *argv], input=stdin, capture_output=True,
                              timeout=timeout, cwd=REPO)
        return CliResult(proc.returncode, proc.stdout.decode(errors="replace"),
                         proc.stderr.decode(errors="replace"), time.monotonic() - start)

    return run


@pytest.fixture
def write_xml(tmp_path: Path) -> Callable[[str | bytes, str], Path]:
    """Write XML text to a temp file and return its path."""

    def write(text: str | bytes, name: str = "disk.xml") -> Path:
        path = tmp_path / name
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return path

    return write
