"""The block ciphers LUKS volumes use, from maintained libraries (no cipher is written here).

- ``aes`` and ``cast5``: ``cryptography`` (CAST5 from its "decrepit" module).
- ``serpent`` and ``twofish``: Botan through its Python binding ``botan2`` (Debian's
  ``python3-botan``, a ctypes wrapper of libbotan). A virtualenv without system
  site-packages does not see it, so it is loaded from Debian's dist-packages
  file when a plain import fails.

Everything here is raw block encryption (ECB over whole blocks); dm-crypt's
modes and IV generators are built on top in :mod:`hotluks.luks.sectors`.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import sys
from functools import lru_cache
from types import ModuleType
from typing import Any

from hotluks.errors import LuksUnsupportedError

BOTAN_PATHS = ("/usr/lib/python3/dist-packages/botan2.py",)
#: cipher name → (block size, allowed key sizes in bytes)
CIPHERS: dict[str, tuple[int, tuple[int, ...]]] = {
    "aes": (16, (16, 24, 32)),
    "serpent": (16, (16, 24, 32)),
    "twofish": (16, (16, 24, 32)),
    "cast5": (8, tuple(range(5, 17))),
}
_BOTAN_NAMES = {"serpent": "Serpent", "twofish": "Twofish"}


@lru_cache(maxsize=1)
def botan() -> ModuleType | None:
    """The ``botan2`` module (Debian's python3-botan), or None when Botan is not installed."""
    try:
        import botan2  # type: ignore[import-not-found, unused-ignore]

        return botan2  # type: ignore[no-any-return, unused-ignore]
    except Exception:  # ImportError, or libbotan missing (the module loads it at import)
        pass
    for path in BOTAN_PATHS:
        if not os.path.exists(path):
            continue
        try:
            spec = importlib.util.spec_from_file_location("botan2", path)
            if spec is None or spec.loader is None:
                continue
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        except Exception:
            continue
        sys.modules.setdefault("botan2", module)
        return module
    return None


def block_size(name: str) -> int:
    """Block size in bytes of a supported cipher."""
    return CIPHERS[name][0]


def check(name: str) -> None:
    """Raise LuksUnsupportedError unless the engine can compute cipher ``name`` here."""
    if name not in CIPHERS:
        raise LuksUnsupportedError(f"cipher {name!r} is not supported (aes, serpent, twofish, cast5)")
    if name in _BOTAN_NAMES and botan() is None:
        raise LuksUnsupportedError(f"cipher {name!r} needs Botan's Python binding (Debian package python3-botan), "
                                   "which is not installed")


@lru_cache(maxsize=64)
def _botan_cipher(name: str, key: bytes) -> Any:
    mod = botan()
    assert mod is not None
    cipher = mod.BlockCipher(_BOTAN_NAMES[name])
    cipher.set_key(key)
    return cipher


atexit.register(_botan_cipher.cache_clear)  # free Botan objects while libbotan is still loaded


def ecb(name: str, key: bytes, data: bytes | bytearray | memoryview, encrypt: bool) -> bytes:
    """Encrypt or decrypt whole blocks independently with cipher ``name``."""
    if name in _BOTAN_NAMES:
        cipher = _botan_cipher(name, bytes(key))
        raw = bytes(data)
        return bytes((cipher.encrypt(raw) if encrypt else cipher.decrypt(raw)).raw)
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    c = Cipher(_algorithm(name, key), modes.ECB())
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()


def _algorithm(name: str, key: bytes) -> Any:
    if name == "cast5":
        from cryptography.hazmat.decrepit.ciphers.algorithms import CAST5

        return CAST5(key)
    from cryptography.hazmat.primitives.ciphers import algorithms

    return algorithms.AES(key)


def cbc(name: str, key: bytes, iv: bytes, data: bytes | bytearray | memoryview, encrypt: bool) -> bytes:
    """One CBC chain (one sector) with ``cryptography`` (aes, cast5)."""
    from cryptography.hazmat.primitives.ciphers import Cipher, modes

    c = Cipher(_algorithm(name, key), modes.CBC(iv))
    ctx = c.encryptor() if encrypt else c.decryptor()
    return ctx.update(data) + ctx.finalize()
