"""Payload bytes against cryptsetup itself: ``cryptsetup reencrypt`` encrypts/decrypts a plain
file offline with a detached LUKS2 header (no device-mapper needed), so the engine's sector
crypto is checked both ways, including 4096-byte sectors with 512-byte IV units."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import pytest

import hotluks.luks as luks

pytestmark = pytest.mark.cryptsetup

SIZE = 6 << 20
CASES = [("aes-xts-plain64", 512, 512), ("aes-xts-plain64", 256, 4096), ("aes-cbc-essiv:sha256", 256, 4096),
         ("aes-cbc-essiv:sha256", 128, 512), ("aes-xts-plain64", 512, 2048)]
IDS = [f"{c}-{b}-{s}" for c, b, s in CASES]
FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


@pytest.mark.parametrize("cipher,bits,sector", CASES, ids=IDS)
def test_cryptsetup_encrypts_engine_decrypts(cryptsetup: Any, files: Any, keyfile: Path, passphrase: bytes,
                                             cipher: str, bits: int, sector: int) -> None:
    plain = os.urandom(SIZE)
    data = files.root / "data.img"
    data.write_bytes(plain)
    header = files.root / "hdr.img"
    cryptsetup("reencrypt", "--encrypt", "--type", "luks2", "--cipher", cipher, "--key-size", str(bits),
               "--sector-size", str(sector), *FAST, "--key-file", str(keyfile), "--header", str(header), str(data))
    assert data.read_bytes() != plain
    hdr = luks.open_header(data, header=header)
    assert hdr.sector_size == sector and hdr.cipher == cipher and not hdr.read_only
    out = io.BytesIO()
    assert luks.decrypt_payload(data, out, passphrase, header=header) == SIZE
    assert out.getvalue() == plain


@pytest.mark.parametrize("cipher,bits,sector", CASES, ids=IDS)
def test_engine_encrypts_cryptsetup_decrypts(cryptsetup: Any, files: Any, keyfile: Path, passphrase: bytes,
                                             cipher: str, bits: int, sector: int) -> None:
    plain = os.urandom(SIZE)
    data = files.blank("data.img", SIZE)
    header = files.root / "hdr.img"
    luks.format_luks2(data, passphrase, header=header, cipher=cipher, key_size=bits, sector_size=sector,
                      kdf=luks.make_kdf("pbkdf2", iterations=1000))
    assert luks.encrypt_payload(io.BytesIO(plain), data, passphrase, header=header) == SIZE
    assert data.read_bytes() != plain
    cryptsetup("reencrypt", "--decrypt", "--force-offline-reencrypt", "--key-file", str(keyfile),
               "--header", str(header), str(data))
    assert data.read_bytes() == plain
