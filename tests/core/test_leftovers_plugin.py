"""testsupport.leftovers: a test session that leaves a hotluks temp directory behind fails."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def session(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    """Run a one-test pytest session with only the leftovers plugin (not this project's conftest)."""
    (tmp_path / "test_one.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-c", os.devnull, "--rootdir", str(tmp_path),
                           "-p", "testsupport.leftovers", "-p", "no:cacheprovider", str(tmp_path / "test_one.py")],
                          capture_output=True, text=True, env=env, timeout=120)


def test_a_directory_left_behind_fails_the_session(tmp_path: Path) -> None:
    proc = session(tmp_path, "import tempfile\n\ndef test_leaks():\n"
                             "    tempfile.mkdtemp(prefix='hotluks-leftover-check-')\n")
    left = re.findall(rf"^{re.escape(tempfile.gettempdir())}/hotluks-leftover-check-\S+$", proc.stdout, re.M)
    for path in left:
        shutil.rmtree(path)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED and len(left) == 1, proc.stdout
    assert "temporary files left behind" in proc.stdout


def test_a_clean_session_passes(tmp_path: Path) -> None:
    proc = session(tmp_path, "import shutil, tempfile\n\ndef test_cleans_up():\n"
                             "    shutil.rmtree(tempfile.mkdtemp(prefix='hotluks-leftover-check-'))\n")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout
    assert "left behind" not in proc.stdout
