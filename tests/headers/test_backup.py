"""Header backup/restore on files: 0600, never overwrites, refuses another volume key unless forced."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.errors import InputError, LuksFormatError, RefusedError
from hotluks.luks.backup import backup_size, header_backup, header_restore
from hotluks.luks.fingerprint import fingerprint

PASS = b"backup unit pass"


def _attached(path: Path, version: int) -> Path:
    path.write_bytes(bytes(20 << 20))
    luks.format_volume(path, PASS, type=f"luks{version}", kdf=luks.make_kdf("pbkdf2", iterations=1000), key_size=256)
    return path


@pytest.mark.parametrize("version", [1, 2])
def test_backup_then_restore_over_damage(tmp_path: Path, version: int) -> None:
    dev = _attached(tmp_path / "dev", version)
    original = dev.read_bytes()
    hdr = header_backup(dev, tmp_path / "bk")
    bk = tmp_path / "bk"
    assert stat.S_IMODE(bk.stat().st_mode) == 0o600
    assert bk.stat().st_size == backup_size(hdr) and backup_size(hdr) % 4096 == 0
    with open(dev, "r+b") as f:  # wipe the header (both LUKS2 copies)
        f.write(bytes(backup_size(hdr)))
    with pytest.raises(LuksFormatError):
        luks.open_header(dev)
    res = header_restore(dev, bk)
    assert res.previous is None and not res.atomic  # data follows the header: written in place
    assert dev.read_bytes() == original
    luks.unlock(dev, PASS)


def test_backup_never_overwrites(tmp_path: Path) -> None:
    dev = _attached(tmp_path / "dev", 1)
    (tmp_path / "bk").write_bytes(b"keep me")
    with pytest.raises(InputError, match="already exists"):
        header_backup(dev, tmp_path / "bk")
    assert (tmp_path / "bk").read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bk.")]


def test_restore_refuses_another_volume_key_unless_forced(tmp_path: Path) -> None:
    dev = _attached(tmp_path / "dev", 2)
    header_backup(dev, tmp_path / "bk")
    other = _attached(tmp_path / "other", 2)  # same passphrase, another volume key
    before = other.read_bytes()
    with pytest.raises(RefusedError, match="another volume key"):
        header_restore(other, tmp_path / "bk")
    assert other.read_bytes() == before
    res = header_restore(other, tmp_path / "bk", force=True)
    assert res.previous is not None and res.previous != res.fingerprint
    assert fingerprint(luks.open_header(other)).value == fingerprint(luks.open_header(dev)).value


def test_detached_header_file_replaced_atomically(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(1 << 20))
    header = tmp_path / "header"
    luks.format_volume(payload, PASS, type="luks1", header=header, kdf=luks.make_kdf("pbkdf2", iterations=1000),
                       key_size=256)
    header.chmod(0o640)
    header_backup(payload, tmp_path / "bk", header=header)
    inode = header.stat().st_ino
    luks.add_key(header, PASS, b"another", kdf=luks.make_kdf("pbkdf2", iterations=1000))
    res = header_restore(payload, tmp_path / "bk", header=header)
    assert res.atomic and res.previous == res.fingerprint
    assert header.stat().st_ino != inode and stat.S_IMODE(header.stat().st_mode) == 0o640
    assert len(luks.open_header(header).keyslots) == 1
    assert payload.read_bytes() == bytes(1 << 20)


def test_restore_rejects_a_non_header(tmp_path: Path) -> None:
    dev = _attached(tmp_path / "dev", 1)
    (tmp_path / "junk").write_bytes(bytes(4096))
    with pytest.raises(LuksFormatError, match="not a valid LUKS header backup"):
        header_restore(dev, tmp_path / "junk")


def test_restore_through_a_symlink_replaces_the_file_not_the_link(tmp_path: Path) -> None:
    payload = tmp_path / "payload"
    payload.write_bytes(bytes(1 << 20))
    real = tmp_path / "real-header"
    luks.format_volume(payload, PASS, type="luks1", header=real, kdf=luks.make_kdf("pbkdf2", iterations=1000),
                       key_size=256)
    link = tmp_path / "header"
    link.symlink_to(real)
    header_backup(payload, tmp_path / "bk", header=link)
    luks.add_key(link, PASS, b"another", kdf=luks.make_kdf("pbkdf2", iterations=1000))
    assert header_restore(payload, tmp_path / "bk", header=link).atomic
    assert link.is_symlink() and len(luks.open_header(real).keyslots) == 1
