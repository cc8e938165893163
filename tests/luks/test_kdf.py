"""AF split/merge, KDF dispatch and hash support."""

from __future__ import annotations

import os

import pytest

from hotluks.errors import LuksUnsupportedError
from hotluks.luks.kdf import KdfParams, af_merge, af_split, hash_algorithm


@pytest.mark.parametrize("hash_name", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("key_bytes", [16, 32, 64, 20])
def test_af_split_then_merge_restores_the_key(hash_name: str, key_bytes: int) -> None:
    key = os.urandom(key_bytes)
    material = af_split(key, 4000, hash_name, os.urandom(key_bytes * 3999))
    assert len(material) == key_bytes * 4000
    assert af_merge(material, key_bytes, 4000, hash_name) == key
    damaged = bytes([material[0] ^ 1]) + material[1:]
    assert af_merge(damaged, key_bytes, 4000, hash_name) != key


def test_af_with_one_stripe_is_the_key() -> None:
    key = os.urandom(32)
    assert af_split(key, 1, "sha256", b"") == key
    assert af_merge(key, 32, 1, "sha256") == key


@pytest.mark.parametrize("name", ["whirlpool", "ripemd160", "md5", "sha-256", "stribog512"])
def test_unsupported_hashes(name: str) -> None:
    with pytest.raises(LuksUnsupportedError):
        hash_algorithm(name)


def test_kdf_dispatch_and_parameters() -> None:
    salt = os.urandom(32)
    p1 = KdfParams("pbkdf2", salt, hash="sha256", iterations=1000).derive(b"pw", 32)
    assert p1 == KdfParams("pbkdf2", salt, hash="sha256", iterations=1000).derive(b"pw", 32)
    assert p1 != KdfParams("pbkdf2", salt, hash="sha512", iterations=1000).derive(b"pw", 32)
    a_i = KdfParams("argon2i", salt, time=3, memory=64, cpus=1).derive(b"pw", 32)
    a_id = KdfParams("argon2id", salt, time=3, memory=64, cpus=1).derive(b"pw", 32)
    assert a_i != a_id and len(a_id) == 32
    for bad in (KdfParams("scrypt", salt), KdfParams("argon2id", salt, time=0, memory=64, cpus=1),
                KdfParams("pbkdf2", salt, hash="sha256", iterations=0)):
        with pytest.raises(LuksUnsupportedError):
            bad.derive(b"pw", 32)


@pytest.mark.parametrize("params", [
    KdfParams("pbkdf2", hash="sha256", salt=bytes(32), iterations=2**32 - 1),
    KdfParams("argon2id", salt=bytes(32), time=1, memory=2**32 - 1, cpus=1),
    KdfParams("argon2i", salt=bytes(32), time=0, memory=1024, cpus=1),
    KdfParams("argon2id", salt=bytes(32), time=1, memory=64, cpus=2**24),
])
def test_hostile_kdf_parameters_are_typed_errors_not_crashes(params: KdfParams) -> None:
    """A hostile header's KDF numbers must not reach cryptography's Rust core (which aborts on overflow)."""
    with pytest.raises(LuksUnsupportedError):
        params.derive(b"pass", 32)


def test_botan_hashes_match_their_published_test_vectors() -> None:
    import hashlib

    import pytest as _pytest

    from hotluks.luks import botanhash
    from hotluks.luks.kdf import digest, pbkdf2

    if not botanhash.available("whirlpool"):
        _pytest.skip("Botan (python3-botan) is not installed")
    assert digest("whirlpool", b"").hex().startswith("19fa61d75522a4669b44e39c1d2e1726c530232130d407f89afee0964997f7a7")
    assert digest("ripemd160", b"").hex() == "9c1185a5c5e9fc54612808977ee8f548b2258d31"
    # a key longer than the HMAC block is hashed first, exactly as HMAC does (checked on sha256 with hashlib)
    long_key = bytes(range(256)) * 40
    assert hashlib.pbkdf2_hmac("sha256", long_key, b"s", 10, 32) == \
        hashlib.pbkdf2_hmac("sha256", hashlib.sha256(long_key).digest(), b"s", 10, 32)
    assert pbkdf2("whirlpool", long_key, b"s", 10, 32) == pbkdf2("whirlpool", digest("whirlpool", long_key), b"s", 10, 32)
