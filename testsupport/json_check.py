"""Root pytest plugin: every ``--json`` document printed during the session is schema-checked.

It sets ``HOTLUKS_JSON_CHECK`` in ``os.environ`` at start-up, so in-process ``main()`` calls and
CLIs started as subprocesses (which inherit the environment) validate each document against its
shipped schema before printing it (:mod:`hotluks.cli.jsoncheck`; an invalid one fails its command
with exit 70). At the end the terminal summary lists which commands' schemas real outputs
exercised. A log path already in the environment is kept (and not removed) for CI to inspect.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path

import pytest

from hotluks.cli.jsoncheck import ENV, schemas

_OWN_LOG: list[Path] = []


def pytest_configure(config: pytest.Config) -> None:
    if os.environ.get(ENV):
        return
    fd, name = tempfile.mkstemp(prefix="hotluks-json-check-", suffix=".log")
    os.close(fd)
    _OWN_LOG.append(Path(name))
    os.environ[ENV] = name


def _lines(log: Path) -> list[str]:
    try:
        return [line for line in log.read_text().splitlines() if line]
    except FileNotFoundError:
        return []


def exercised(log: Path) -> Counter[str]:
    """How many valid documents each schema file validated (from the log)."""
    return Counter(name for line in _lines(log) for name in line.split("\t")[-1].split())


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    log = os.environ.get(ENV)
    lines = _lines(Path(log)) if log else []
    if not log or not lines:
        return
    seen = exercised(Path(log))
    errors = sorted({line.split("\t")[0] for line in lines if "error.json" in line.split("\t")[-1].split()})
    missed = sorted(set(schemas()) - set(seen))
    terminalreporter.write_sep("-", f"{ENV}: {len(lines)} --json documents matched their schemas")
    terminalreporter.write_line("schemas exercised: " + ", ".join(f"{n} ({c})" for n, c in sorted(seen.items())))
    terminalreporter.write_line("error documents of: " + (", ".join(errors) or "none"))
    if missed:
        terminalreporter.write_line("schemas not exercised in this session: " + ", ".join(missed))


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _OWN_LOG:
        path.unlink(missing_ok=True)
        if os.environ.get(ENV) == str(path):
            del os.environ[ENV]
    _OWN_LOG.clear()
