"""The newc writer, checked by the system cpio tool."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from hotluks.demo.guest.cpio import Entry, newc_archive

ENTRIES = [
    Entry.directory("bin"),
    Entry.file("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    Entry.symlink("bin/sh", "tool"),
    Entry.file("odd-size", b"x" * 7),
    Entry.file("empty", b""),
]


def test_archive_is_deterministic_and_aligned() -> None:
    first = newc_archive(ENTRIES)
    assert first == newc_archive(ENTRIES)
    assert first.startswith(b"070701")
    assert b"TRAILER!!!\0" in first
    assert len(first) % 4 == 0


@pytest.mark.skipif(shutil.which("cpio") is None, reason="cpio not installed (scripts/setup-system.sh)")
def test_system_cpio_extracts_what_we_wrote(tmp_path: Path) -> None:
    archive = newc_archive([*ENTRIES, Entry.chardev("dev-console", 5, 1)])
    listing = subprocess.run(["cpio", "-itv"], input=archive, capture_output=True, check=True).stdout.decode()
    assert re.search(r"^c\S+\s+1\s+root\s+root\s+5,\s+1 .*dev-console$", listing, re.M), listing
    out = tmp_path / "x"
    out.mkdir()
    archive = newc_archive(ENTRIES)
    subprocess.run(["cpio", "-idm", "--quiet"], input=archive, cwd=out, check=True)
    assert (out / "bin" / "tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((out / "bin" / "tool").stat().st_mode) == 0o755
    assert (out / "bin" / "sh").is_symlink() and (out / "bin" / "sh").readlink() == Path("tool")
    assert (out / "odd-size").read_bytes() == b"xxxxxxx"
    assert (out / "empty").read_bytes() == b""
