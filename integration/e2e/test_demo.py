"""``hotluks demo`` is the product's first run: it must pass, clean up, and leak nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]


def _demo_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("hotluks-demo-*")}


def _qemu_children(pid: int) -> list[str]:
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "qemu-system" in line]


@pytest.mark.parametrize("mode", ["guest", "guest-less"])
def test_demo_passes_cleans_up_and_reports_json(mode: str) -> None:
    before = _demo_dirs()
    args = [sys.executable, "-m", "hotluks", "demo", "--json"] + (["--no-guest"] if mode == "guest-less" else [])
    proc = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["format"] == "hotluks/1" and report["command"] == "demo"
    assert report["ok"] is True and report["mode"] == mode
    checks = [s for s in report["steps"] if s["ok"] is not None]
    assert len(checks) >= 4 and all(s["ok"] for s in checks)
    titles = " | ".join(s["title"] for s in report["steps"])
    assert "attach" in titles and "detach" in titles
    assert report["total_seconds"] < 60
    assert _demo_dirs() == before, "the demo left its temporary directory behind"
    assert not _qemu_children(os.getpid())


def test_demo_human_output_names_each_step() -> None:
    proc = subprocess.run([sys.executable, "-m", "hotluks", "demo"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    for needle in ("object-add", "blockdev-add", "device_add", "DEVICE_DELETED", "sha256"):
        assert needle in proc.stdout
    assert "Traceback" not in proc.stderr
