"""libvirt's own test data (``tests/qemuxmlconfdata``), from its Debian source package, cached.

The source comes from bookworm-backports with ``apt-get source --download-only`` (a
``deb-src`` line: ``scripts/setup-system.sh`` writes ``hotluks-src.sources``). Only the
upstream tarball is needed; its SHA-256 is checked against ``apt-cache showsrc``. The
extracted files live in the cache (``$HOTLUKS_CACHE`` or ``~/.cache/hotluks``), never in git.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

SUITE = "bookworm-backports"
WANTED = re.compile(r"^[^/]+/tests/(qemuxmlconfdata/[^/]+\.xml|qemuxmlconftest\.c)$")


class Unavailable(Exception):
    """The source package cannot be fetched here (no deb-src line, no network)."""


def cache_root() -> Path:
    return Path(os.environ.get("HOTLUKS_CACHE") or Path.home() / ".cache" / "hotluks")


def _showsrc() -> tuple[str, str, str]:
    """(version, orig tarball name, its sha256) of the newest libvirt source apt knows."""
    if shutil.which("apt-cache") is None:
        raise Unavailable("apt-cache is not installed")
    out = subprocess.run(["apt-cache", "showsrc", "libvirt"], capture_output=True, text=True, timeout=60).stdout
    best: tuple[tuple[int, ...], str, str, str] | None = None
    for record in out.split("\n\n"):
        version = re.search(r"^Version: (\S+)", record, re.M)
        sums = re.search(r"^Checksums-Sha256:\n((?: .*\n?)+)", record, re.M)
        if version is None or sums is None:
            continue
        orig = re.search(r"^ ([0-9a-f]{64}) \d+ (libvirt_[^ ]+\.orig\.tar\.xz)$", sums.group(1), re.M)
        if orig is None:
            continue
        key = tuple(int(n) for n in re.findall(r"\d+", version.group(1).split("-")[0]))
        if best is None or key > best[0]:
            best = (key, version.group(1), orig.group(2), orig.group(1))
    if best is None:
        raise Unavailable("no libvirt source package known to apt (add a deb-src line: scripts/setup-system.sh)")
    return best[1], best[2], best[3]


def testdata_dir() -> Path:
    """The extracted ``tests/`` directory of libvirt's source (downloaded once, then cached)."""
    version, orig, sha256 = _showsrc()
    root = cache_root() / "libvirt-src"
    done = root / f"{orig}.extracted"
    tests = root / "tests"
    if done.exists() and tests.is_dir():
        return tests
    root.mkdir(parents=True, exist_ok=True)
    tarball = root / orig
    if not tarball.exists() or hashlib.sha256(tarball.read_bytes()).hexdigest() != sha256:
        # the Debian parts may be missing on a partial mirror; only the upstream tarball matters
        subprocess.run(["apt-get", "source", "--download-only", "-qq", f"libvirt={version}"], cwd=root,
                       capture_output=True, timeout=600)
    if not tarball.exists():
        raise Unavailable(f"apt-get source could not download {orig}")
    if hashlib.sha256(tarball.read_bytes()).hexdigest() != sha256:
        raise Unavailable(f"{orig} does not match the SHA-256 apt lists")
    shutil.rmtree(tests, ignore_errors=True)
    with tarfile.open(tarball) as tar:
        for member in tar:
            match = WANTED.match(member.name)
            if match and member.isfile():
                target = tests / match.group(1)
                target.parent.mkdir(parents=True, exist_ok=True)
                extracted = tar.extractfile(member)
                assert extracted is not None
                target.write_bytes(extracted.read())
    done.touch()
    return tests


def parse_error_cases(tests: Path) -> set[str]:
    """Names libvirt's own test suite expects to fail parsing (``DO_TEST_*PARSE_ERROR("name")``)."""
    source = (tests / "qemuxmlconftest.c").read_text(errors="replace")
    return set(re.findall(r'DO_TEST\w*PARSE_ERROR\w*\("([^"]+)"', source))
