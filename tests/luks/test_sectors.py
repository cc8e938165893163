"""Sector crypto is bit-exact against ``cryptography``'s own XTS and CBC, sector by sector."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hotluks.errors import LuksUnsupportedError
from hotluks.luks.sectors import VECTOR_MIN_SECTORS, crypt_sectors, parse_cipher


def _iv(n: int, bits: int = 64) -> bytes:
    return (n & ((1 << bits) - 1)).to_bytes(16, "little")


def _reference(mode: str, key: bytes, data: bytes, sector: int, first_iv: int) -> bytes:
    out = b""
    for i in range(len(data) // sector):
        iv_n = first_iv + i * sector // 512
        chunk = data[i * sector:(i + 1) * sector]
        if mode.startswith("xts"):
            m: modes.Mode = modes.XTS(_iv(iv_n, 32 if mode == "xts-plain" else 64))
        elif mode == "ecb":
            m = modes.ECB()
        else:
            iv = _iv(iv_n, 32 if mode == "cbc-plain" else 64)
            if mode == "cbc-essiv:sha256":
                h = hashes.Hash(hashes.SHA256())
                h.update(key)
                enc = Cipher(algorithms.AES(h.finalize()), modes.ECB()).encryptor()
                iv = enc.update(iv)
            m = modes.CBC(iv)
        e = Cipher(algorithms.AES(key), m).encryptor()
        out += e.update(chunk) + e.finalize()
    return out


CASES = [
    ("xts-plain64", 64, 512, 0), ("xts-plain64", 32, 4096, 8), ("xts-plain64", 64, 1024, (1 << 40) + 3),
    ("xts-plain", 64, 512, (1 << 32) - 2), ("cbc-essiv:sha256", 32, 512, 5), ("cbc-essiv:sha256", 16, 4096, 0),
    ("cbc-plain64", 32, 512, (1 << 32) - 1), ("cbc-plain", 24, 2048, (1 << 32) - 4), ("ecb", 32, 512, 0),
]


@pytest.mark.parametrize("sectors", [9, VECTOR_MIN_SECTORS + 3], ids=["per-sector", "vectorised"])
@pytest.mark.parametrize("mode,key_bytes,sector,first_iv", CASES, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_bit_exact_against_cryptography(mode: str, key_bytes: int, sector: int, first_iv: int, sectors: int) -> None:
    key = os.urandom(key_bytes)
    data = os.urandom(sector * sectors)
    spec = parse_cipher(f"aes-{mode}")
    expected = _reference(mode, key, data, sector, first_iv)
    encrypted = crypt_sectors(spec, key, data, sector_size=sector, first_iv=first_iv, encrypt=True)
    assert encrypted == expected
    assert crypt_sectors(spec, key, encrypted, sector_size=sector, first_iv=first_iv, encrypt=False) == data


def test_sector_boundaries_change_the_ciphertext() -> None:
    key = os.urandom(64)
    data = bytes(4096)
    spec = parse_cipher("aes-xts-plain64")
    small = crypt_sectors(spec, key, data, sector_size=512, first_iv=0, encrypt=True)
    large = crypt_sectors(spec, key, data, sector_size=4096, first_iv=0, encrypt=True)
    assert small[:512] == large[:512] and small[512:] != large[512:]


@pytest.mark.parametrize("spec", [
    "camellia-xts-plain64", "twofish-xts-essiv:md5", "aes-lrw-benbi", "aes-cbc-essiv:whirlpool",
    "cast5-xts-plain64", "aes-cbc-benbi", "capi:xts(aes)-plain64", "aes", "", "aes-gcm-random",
    "cipher_null-ecb",
])
def test_unsupported_cipher_specs_raise_a_typed_error(spec: str) -> None:
    with pytest.raises(LuksUnsupportedError):
        parse_cipher(spec)


@pytest.mark.parametrize("spec,key_bytes", [("aes-xts-plain64", 32 + 8), ("aes-xts-plain64", 16),
                                            ("aes-cbc-plain64", 64), ("aes-ecb", 0)])
def test_wrong_key_sizes_raise_a_typed_error(spec: str, key_bytes: int) -> None:
    with pytest.raises(LuksUnsupportedError):
        crypt_sectors(parse_cipher(spec), bytes(key_bytes), bytes(512), sector_size=512, first_iv=0, encrypt=False)


def test_small_buffers_do_not_import_numpy() -> None:
    """Preflight (keyslot material) must not pay numpy's import time."""
    import subprocess
    import sys

    code = ("import sys, os; from hotluks.luks.sectors import crypt_sectors, parse_cipher; "
            "crypt_sectors(parse_cipher('aes-xts-plain64'), os.urandom(64), bytes(512 * 8), sector_size=512, "
            "first_iv=0, encrypt=False); print('numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_cipher_family_round_trips() -> None:
    import os

    from hotluks.luks.sectors import crypt_sectors, parse_cipher

    for name, bits in [("aes-xts-essiv:sha256", 512), ("aes-xts-plain64", 384), ("serpent-xts-plain64", 512),
                       ("twofish-cbc-essiv:sha256", 256), ("cast5-cbc-plain64", 128), ("serpent-ecb", 256)]:
        spec = parse_cipher(name)
        key = os.urandom(bits // 8)
        data = os.urandom(512 * 70)  # past the vectorisation threshold
        enc = crypt_sectors(spec, key, data, sector_size=512, first_iv=5, encrypt=True)
        assert enc != data
        assert crypt_sectors(spec, key, enc, sector_size=512, first_iv=5, encrypt=False) == data
        # the first sectors alone give the same bytes (per-sector and vectorised paths agree)
        assert crypt_sectors(spec, key, data[:1024], sector_size=512, first_iv=5, encrypt=True) == enc[:1024]


def test_missing_botan_is_a_clear_unsupported_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from hotluks.errors import LuksUnsupportedError
    from hotluks.luks import blockciphers
    from hotluks.luks.sectors import parse_cipher

    monkeypatch.setattr(blockciphers, "botan", lambda: None)
    with pytest.raises(LuksUnsupportedError, match="python3-botan"):
        parse_cipher("serpent-xts-plain64")
    with pytest.raises(LuksUnsupportedError, match="not supported"):
        parse_cipher("camellia-xts-plain64")
    with pytest.raises(LuksUnsupportedError, match="not supported for cast5"):
        parse_cipher("cast5-xts-plain64")
