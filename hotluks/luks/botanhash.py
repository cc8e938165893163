"""Hashes LUKS1 volumes use that ``cryptography`` lacks (whirlpool, ripemd160, sm3, streebog), from Botan.

Botan's Python binding (Debian's python3-botan, see :mod:`hotluks.luks.blockciphers`)
provides the hash and PBKDF2 itself; nothing here computes a primitive.
"""

from __future__ import annotations

import ctypes
from typing import Any

from hotluks.errors import LuksUnsupportedError
from hotluks.luks.blockciphers import botan

#: LUKS hash name → Botan algorithm name
NAMES = {"whirlpool": "Whirlpool", "ripemd160": "RIPEMD-160", "sm3": "SM3", "stribog256": "Streebog-256",
         "stribog512": "Streebog-512"}


#: block size of every hash above (HMAC's key block)
HMAC_BLOCK = 64


def _module(name: str) -> Any:
    mod = botan()
    if name.lower() not in NAMES:
        raise LuksUnsupportedError(f"hash {name!r} is not supported by the engine")
    if mod is None:
        raise LuksUnsupportedError(f"hash {name!r} needs Botan's Python binding (Debian package python3-botan)")
    return mod


def available(name: str) -> bool:
    """True when Botan provides this LUKS hash here."""
    return name.lower() in NAMES and botan() is not None


def digest(name: str, *parts: bytes) -> bytes:
    """One-shot hash of the concatenated ``parts``."""
    mod = _module(name)
    h = mod.HashFunction(NAMES[name.lower()])
    for part in parts:
        h.update(bytes(part))
    return bytes(h.final())


def digest_size(name: str) -> int:
    mod = _module(name)
    return int(mod.HashFunction(NAMES[name.lower()]).output_length())


def pbkdf2(name: str, password: bytes, salt: bytes, iterations: int, length: int) -> bytes:
    """PBKDF2-HMAC with a Botan hash (Botan's own PBKDF2; the password may hold any bytes)."""
    mod = _module(name)
    if len(password) > HMAC_BLOCK:
        # HMAC itself replaces a key longer than the hash's block by its hash (RFC 2104); Botan refuses
        # such keys (over 4 KiB) for PBKDF2, so hand it the key HMAC would use anyway
        password = digest(name, password)
    out = ctypes.create_string_buffer(length)
    algo = f"PBKDF2({NAMES[name.lower()]})".encode()
    # the binding's pbkdf() only takes str passwords: call the same FFI function with the raw bytes
    try:
        mod._DLL.botan_pwdhash(algo, iterations, 0, 0, out, length, password, len(password), salt, len(salt))
    except Exception as exc:  # BotanException: a parameter Botan refuses
        raise LuksUnsupportedError(f"PBKDF2 with {name!r} failed in Botan: {exc}") from None
    return bytes(out.raw)
