"""Engine ↔ cryptsetup: headers made by one open in the other, with the same volume key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import hotluks.luks as luks
from hotluks.errors import WrongPassphraseError

pytestmark = pytest.mark.cryptsetup

# (type, pbkdf, cipher, key bits, sector size)
CRYPTSETUP_MADE = [
    ("luks1", "pbkdf2", "aes-xts-plain64", 512, 512),
    ("luks1", "pbkdf2", "aes-cbc-essiv:sha256", 256, 512),
    ("luks2", "pbkdf2", "aes-xts-plain64", 512, 512),
    ("luks2", "pbkdf2", "aes-xts-plain64", 256, 4096),
    ("luks2", "argon2id", "aes-xts-plain64", 512, 4096),
    ("luks2", "argon2id", "aes-cbc-essiv:sha256", 256, 512),
    ("luks2", "pbkdf2", "aes-cbc-essiv:sha256", 256, 4096),
    ("luks2", "argon2i", "aes-xts-plain64", 512, 512),
]


def _kdf_args(pbkdf: str) -> list[str]:
    if pbkdf == "pbkdf2":
        return ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]
    return ["--pbkdf", pbkdf, "--pbkdf-force-iterations", "4", "--pbkdf-memory", "32", "--pbkdf-parallel", "1"]


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("kind,pbkdf,cipher,bits,sector", CRYPTSETUP_MADE,
                         ids=["-".join(map(str, c)) for c in CRYPTSETUP_MADE])
def test_cryptsetup_headers_unlock_with_the_same_volume_key(
        cryptsetup: Any, files: Any, keyfile: Path, passphrase: bytes, other_passphrase: bytes,
        kind: str, pbkdf: str, cipher: str, bits: int, sector: int, detached: bool) -> None:
    device = files.blank("disk.img", 24 << 20)
    header = files.root / "hdr.img" if detached else None
    args = ["luksFormat", "--type", kind, *_kdf_args(pbkdf), "--cipher", cipher, "--key-size", str(bits),
            "--key-file", str(keyfile)]
    if kind == "luks2":
        args += ["--sector-size", str(sector)]
    if header:
        args += ["--header", str(header)]
    cryptsetup(*args, str(device))
    expected = cryptsetup.volume_key(device, keyfile, header)

    hdr = luks.open_header(device, header=header)
    assert hdr.version == int(kind[-1])
    assert hdr.cipher == cipher and hdr.sector_size == sector and hdr.key_bytes == bits // 8
    assert hdr.detached is detached
    vk = luks.unlock(hdr, passphrase)
    assert vk.key == expected
    with pytest.raises(WrongPassphraseError):
        luks.unlock(hdr, other_passphrase)
    luks.verify_passphrase(device, passphrase, header_path=header)


ENGINE_MADE = [
    ("luks1", "pbkdf2", "aes-xts-plain64", 512, 512),
    ("luks1", "pbkdf2", "aes-cbc-essiv:sha256", 256, 512),
    ("luks1", "pbkdf2", "aes-cbc-plain64", 128, 512),
    ("luks2", "pbkdf2", "aes-xts-plain64", 512, 512),
    ("luks2", "argon2id", "aes-xts-plain64", 256, 4096),
    ("luks2", "argon2i", "aes-cbc-essiv:sha256", 256, 2048),
]


def _engine_kdf(pbkdf: str) -> luks.KdfParams:
    if pbkdf == "pbkdf2":
        return luks.make_kdf("pbkdf2", iterations=1000)
    return luks.make_kdf(pbkdf, iterations=3, memory_kib=64, parallel=1)


@pytest.mark.parametrize("detached", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("kind,pbkdf,cipher,bits,sector", ENGINE_MADE, ids=["-".join(map(str, c)) for c in ENGINE_MADE])
def test_engine_headers_open_in_cryptsetup(
        cryptsetup: Any, files: Any, keyfile: Path, other_keyfile: Path, passphrase: bytes,
        kind: str, pbkdf: str, cipher: str, bits: int, sector: int, detached: bool) -> None:
    device = files.blank("disk.img", 24 << 20)
    header = files.root / "hdr.img" if detached else None
    vk = luks.format_volume(device, passphrase, type=kind, header=header, cipher=cipher, key_size=bits,
                            kdf=_engine_kdf(pbkdf), sector_size=sector)
    dump = cryptsetup(*(["--header", str(header)] if header else []), "luksDump", str(device)).stdout.decode()
    assert f"Version:       \t{kind[-1]}" in dump
    assert cryptsetup.test_passphrase(device, keyfile, header) == 0
    assert cryptsetup.test_passphrase(device, other_keyfile, header) != 0
    assert cryptsetup.volume_key(device, keyfile, header) == vk.key
    if detached:
        assert not device.read_bytes().strip(b"\0"), "a detached format must not write the payload device"


@pytest.mark.parametrize("kind", ["luks1", "luks2"])
def test_add_and_remove_keys_are_seen_by_cryptsetup(
        cryptsetup: Any, files: Any, keyfile: Path, other_keyfile: Path, passphrase: bytes,
        other_passphrase: bytes, kind: str) -> None:
    device = files.blank("disk.img", 24 << 20)
    cryptsetup("luksFormat", "--type", kind, *_kdf_args("pbkdf2"), "--key-file", str(keyfile), str(device))
    slot = luks.add_key(device, passphrase, other_passphrase, kdf=_engine_kdf("pbkdf2" if kind == "luks1" else "argon2id"))
    assert slot == 1
    assert cryptsetup.test_passphrase(device, other_keyfile) == 0
    assert luks.unlock(device, other_passphrase).keyslot == 1
    # cryptsetup adds a key, the engine sees it
    third = files.root / "third.key"
    third.write_bytes(b"third")
    cryptsetup("luksAddKey", "--key-file", str(keyfile), *_kdf_args("pbkdf2"), str(device), str(third))
    assert luks.unlock(device, b"third").keyslot == 2
    assert luks.remove_key(device, passphrase) == 0
    assert cryptsetup.test_passphrase(device, keyfile) != 0
    assert cryptsetup.test_passphrase(device, other_keyfile) == 0
    with pytest.raises(WrongPassphraseError):
        luks.unlock(device, passphrase)
    dump = cryptsetup("luksDump", str(device)).stdout.decode()
    if kind == "luks1":
        assert "Key Slot 0: DISABLED" in dump and "Key Slot 1: ENABLED" in dump
    else:
        assert "\n  0: luks2" not in dump and "\n  1: luks2" in dump
