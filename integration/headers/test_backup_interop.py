"""Header backup/restore and fingerprints, interoperable with cryptsetup both ways.

hotluks' backup file is byte-identical to ``cryptsetup luksHeaderBackup``'s; each tool restores
the other's backup onto a wiped header and the passphrase opens it again; hotluks refuses to
restore another volume key's header without --force; cryptsetup's keyslot changes keep the
fingerprint, ``luksFormat`` over the same file changes it.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from testsupport.vms import run_cli

pytestmark = pytest.mark.cryptsetup
PASS = b"backup interop pass"


def _cs(cryptsetup: str, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([cryptsetup, "--batch-mode", *map(str, args)], capture_output=True, timeout=120,
                          check=check)


def _volume(cryptsetup: str, tmp_path: Path, name: str, version: int) -> tuple[Path, Path]:
    dev = tmp_path / name
    with open(dev, "wb") as f:
        f.truncate(24 << 20)
    key = tmp_path / "key"
    key.write_bytes(PASS)
    _cs(cryptsetup, "luksFormat", "--type", f"luks{version}", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--key-file", key, dev)
    return dev, key


def _fp(dev: Path) -> str:
    proc = run_cli("luks", "fingerprint", dev)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.parametrize("version", [1, 2])
def test_backups_are_cryptsetups_and_restore_both_ways(cryptsetup: str, tmp_path: Path, version: int) -> None:
    dev, key = _volume(cryptsetup, tmp_path, "dev", version)
    original = dev.read_bytes()
    ours, theirs = tmp_path / "ours.bak", tmp_path / "theirs.bak"
    proc = run_cli("luks", "header-backup", dev, "--header-backup-file", ours)
    assert proc.returncode == 0, proc.stderr
    _cs(cryptsetup, "luksHeaderBackup", dev, "--header-backup-file", theirs)
    assert ours.read_bytes() == theirs.read_bytes()
    assert stat.S_IMODE(ours.stat().st_mode) == 0o600
    assert run_cli("luks", "header-backup", dev, "--header-backup-file", ours).returncode == 2  # never overwrites

    size = ours.stat().st_size
    for restorer in ("cryptsetup", "hotluks"):
        with open(dev, "r+b") as f:
            f.write(bytes(size))
        assert _cs(cryptsetup, "luksOpen", "--test-passphrase", "--key-file", key, dev, check=False).returncode != 0
        if restorer == "cryptsetup":
            _cs(cryptsetup, "luksHeaderRestore", dev, "--header-backup-file", ours)
        else:
            proc = run_cli("luks", "header-restore", dev, "--header-backup-file", theirs)
            assert proc.returncode == 0, proc.stderr
        assert _cs(cryptsetup, "luksOpen", "--test-passphrase", "--key-file", key, dev).returncode == 0
        assert dev.read_bytes() == original


@pytest.mark.parametrize("version", [1, 2])
def test_restore_refuses_another_volume_key(cryptsetup: str, tmp_path: Path, version: int) -> None:
    dev, key = _volume(cryptsetup, tmp_path, "dev", version)
    _cs(cryptsetup, "luksHeaderBackup", dev, "--header-backup-file", tmp_path / "old.bak")
    _cs(cryptsetup, "luksFormat", "--type", f"luks{version}", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--key-file", key, dev)  # same passphrase, new volume key
    current = dev.read_bytes()
    proc = run_cli("luks", "header-restore", dev, "--header-backup-file", tmp_path / "old.bak")
    assert proc.returncode == 2 and "another volume key" in proc.stderr and "Traceback" not in proc.stderr
    assert dev.read_bytes() == current
    proc = run_cli("luks", "header-restore", dev, "--header-backup-file", tmp_path / "old.bak", "--force")
    assert proc.returncode == 0, proc.stderr
    assert "FORCED" in proc.stdout


@pytest.mark.parametrize("version", [1, 2])
def test_cryptsetup_keyslot_changes_keep_the_fingerprint(cryptsetup: str, tmp_path: Path, version: int) -> None:
    dev, key = _volume(cryptsetup, tmp_path, "dev", version)
    pinned = _fp(dev)
    new = tmp_path / "new"
    new.write_bytes(b"another passphrase")
    _cs(cryptsetup, "luksAddKey", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", key, dev, new)
    assert _fp(dev) == pinned
    _cs(cryptsetup, "luksChangeKey", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file", new,
        dev, key)
    assert _fp(dev) == pinned
    _cs(cryptsetup, "luksRemoveKey", dev, key)
    if version == 2:
        _cs(cryptsetup, "config", "--label", "relabelled", dev)
    assert _fp(dev) == pinned
    _cs(cryptsetup, "luksFormat", "--type", f"luks{version}", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations",
        "1000", "--key-file", key, dev)
    assert _fp(dev) != pinned
