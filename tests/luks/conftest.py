"""Pure fixtures for the LUKS engine's unit tests: headers built in memory, cheap KDFs."""

from __future__ import annotations

import os

import pytest

from hotluks.luks import create
from hotluks.luks.kdf import KdfParams

PASSPHRASE = b"unit test pass"


@pytest.fixture(scope="session")
def passphrase() -> bytes:
    return PASSPHRASE


@pytest.fixture(scope="session")
def luks1_blob() -> bytes:
    """An attached LUKS1 header (2 MiB of metadata) with keyslot 0 set."""
    key = os.urandom(64)
    return create.build_luks1(key, PASSPHRASE, cipher="aes-xts-plain64", hash_name="sha256", kdf_iterations=1000,
                              digest_iterations=1000, uuid="11111111-2222-3333-4444-555555555555",
                              detached=False, rand=os.urandom).blob


@pytest.fixture(scope="session")
def luks2_blob() -> bytes:
    """A LUKS2 header (both copies + 16 MiB keyslots area) with keyslot 0 set."""
    key = os.urandom(64)
    kdf = KdfParams("pbkdf2", os.urandom(32), hash="sha256", iterations=1000)
    return create.build_luks2(key, PASSPHRASE, cipher="aes-xts-plain64", kdf=kdf, digest_hash="sha256",
                              digest_iterations=1000, uuid="11111111-2222-3333-4444-555555555555",
                              detached=False, sector_size=4096, rand=os.urandom).blob
