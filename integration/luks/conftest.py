"""Fixtures for the LUKS engine's interoperability tests against cryptsetup and QEMU."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

PASSPHRASE = b"interop pass \xc3\xa9 1"
OTHER = b"second secret 2"


def _need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed")
    return path


def run(args: Sequence[str], *, check: bool = True, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool, capturing output; fail with its stderr when ``check``."""
    proc = subprocess.run(list(args), input=input, capture_output=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc


class Cryptsetup:
    """The cryptsetup binary as the interoperability oracle (plain files, no device-mapper)."""

    def __init__(self, binary: str) -> None:
        self.binary = binary

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run([self.binary, "--batch-mode", *args], check=check)

    def volume_key(self, device: Path, keyfile: Path, header: Path | None = None) -> bytes:
        """``luksDump --dump-volume-key`` as bytes."""
        extra = ["--header", str(header)] if header else []
        out = self("luksDump", "--dump-volume-key", "--key-file", str(keyfile), *extra, str(device)).stdout.decode()
        m = re.search(r"(?:MK|Volume key) dump:\s*((?:[0-9a-f]{2}\s*)+)", out)
        assert m, out
        return bytes.fromhex("".join(m.group(1).split()))

    def test_passphrase(self, device: Path, keyfile: Path, header: Path | None = None) -> int:
        extra = ["--header", str(header)] if header else []
        return self("luksOpen", "--test-passphrase", "--key-file", str(keyfile), *extra, str(device),
                    check=False).returncode


@pytest.fixture(scope="session")
def cryptsetup() -> Cryptsetup:
    return Cryptsetup(_need("cryptsetup"))


@pytest.fixture(scope="session")
def qemu_img() -> str:
    return _need("qemu-img")


@pytest.fixture(scope="session")
def qemu_io() -> str:
    return _need("qemu-io")


@pytest.fixture
def keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "pass.key"
    path.write_bytes(PASSPHRASE)
    return path


@pytest.fixture
def other_keyfile(tmp_path: Path) -> Path:
    path = tmp_path / "other.key"
    path.write_bytes(OTHER)
    return path


class Files:
    """Helpers for test files in one temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def blank(self, name: str, size: int) -> Path:
        """A sparse file of ``size`` bytes."""
        path = self.root / name
        with open(path, "wb") as f:
            f.truncate(size)
        return path

    @staticmethod
    def image_opts(payload: Path, header: Path | None = None) -> str:
        """QEMU ``--image-opts`` for a luks node over a file (and a detached header file)."""
        opts = f"driver=luks,key-secret=sec0,file.driver=file,file.filename={payload}"
        if header is not None:
            opts += f",header.driver=file,header.filename={header}"
        return opts

    @staticmethod
    def run(args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return run(args, check=check)


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return Files(tmp_path)


@pytest.fixture
def passphrase() -> bytes:
    return PASSPHRASE


@pytest.fixture
def other_passphrase() -> bytes:
    return OTHER


# --- cryptsetup's own test material, from the Debian source package (never committed) -------------------------

def _cache_root() -> Path:
    """/var/cache/hotluks when writable (root), else the user's cache directory."""
    import os

    system = Path("/var/cache/hotluks")
    try:
        system.mkdir(parents=True, exist_ok=True)
        if os.access(system, os.W_OK):
            return system
    except OSError:
        pass
    user = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hotluks"
    user.mkdir(parents=True, exist_ok=True)
    return user


def _fetch_cryptsetup_tests(dest: Path) -> str | None:
    """``apt-get source cryptsetup`` (the installed binary's version first) into a temp dir; keep only
    its ``tests/`` folder at ``dest``. Returns why it failed, or None."""
    import tempfile

    apt = shutil.which("apt-get")
    if apt is None:
        return "apt-get is not available"
    version = subprocess.run(["dpkg-query", "-W", "-f", "${source:Version}", "cryptsetup-bin"],
                             capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="cryptsetup-src.", dir=dest.parent) as tmp:
        errors = []
        for spec in ([f"cryptsetup={version}"] if version else []) + ["cryptsetup"]:
            proc = subprocess.run([apt, "source", "-qq", spec], cwd=tmp, capture_output=True, text=True, timeout=600)
            if proc.returncode == 0:
                break
            errors.append(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}")
        else:
            return ("apt-get source cryptsetup failed (no deb-src line? run scripts/setup-system.sh; "
                    f"or apt unreachable): {'; '.join(errors)}")
        trees = [p for p in Path(tmp).iterdir() if p.is_dir() and (p / "tests" / "generators").is_dir()]
        if not trees:
            return "the cryptsetup source package has no tests/generators folder"
        (trees[0] / "tests").rename(dest)
    return None


@pytest.fixture(scope="session")
def cryptsetup_tests() -> Path:
    """cryptsetup's ``tests/`` folder (generators, images), cached across runs under /var/cache/hotluks.

    Fetched once per cryptsetup version with ``apt-get source``; skipped (with the reason) only when
    apt cannot provide it. Tests copy what they use into their own tmp_path: the cache stays pristine.
    """
    import fcntl

    version = subprocess.run(["dpkg-query", "-W", "-f", "${source:Version}", "cryptsetup-bin"],
                             capture_output=True, text=True).stdout.strip().replace(":", "_") or "unknown"
    root = _cache_root() / "cryptsetup-source"
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"{version}-tests"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for stale in root.glob("*-tests"):  # older versions' material is not this oracle's
            if stale != dest:
                shutil.rmtree(stale, ignore_errors=True)
        if not (dest / "generators").is_dir():
            why = _fetch_cryptsetup_tests(dest)
            if why:
                pytest.skip(why)
    return dest
