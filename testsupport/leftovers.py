"""Root pytest plugin: a session leaves none of hotluks' temporary files or directories behind.

Fixtures, helpers and hotluks itself name what they make in the temporary directories
``hotluks-…`` or ``hl-…``. Whatever of that appears during the session and is still there at
its end fails the run, listed in the summary. (pytest's own ``tmp_path`` is removed after each
test by the root conftest; the JSON check's log is removed when pytest unconfigures.)
"""

from __future__ import annotations

import os
import tempfile

import pytest

PLACES = tuple(dict.fromkeys((tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm")))
PREFIXES = ("hotluks-", "hl-")
REMOVED_LATER = ("hotluks-json-check-",)

_before: set[str] = set()
_left: list[str] = []


def ours() -> set[str]:
    """hotluks' entries in the temporary directories now."""
    found: set[str] = set()
    for place in PLACES:
        try:
            names = os.listdir(place)
        except OSError:
            continue
        found.update(os.path.join(place, name) for name in names
                     if name.startswith(PREFIXES) and not name.startswith(REMOVED_LATER))
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    _before.update(ours())


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _left[:] = sorted(ours() - _before)
    if _left and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _left:
        terminalreporter.section("temporary files left behind", red=True)
        for path in _left:
            terminalreporter.write_line(path)
