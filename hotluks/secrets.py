"""Secret material: reading it from files, and sealing it for QEMU's ``secret`` objects.

Values are ``bytes`` held in :class:`SecretValue`, whose ``repr`` never shows them.
With a master key QEMU already holds (libvirt's ``masterKey0`` or one given to
hotluks), the monitor only ever sees AES-256-CBC ciphertext, as libvirt does.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotluks.errors import SecretError
from hotluks.plan.steps import SecretBinding

REDACTED = "<redacted>"
MAX_SECRET_BYTES = 64 * 1024


@dataclass(frozen=True)
class SecretValue:
    """Secret bytes that never print themselves."""

    value: bytes = b""

    def __repr__(self) -> str:
        return f"SecretValue(<{len(self.value)} bytes>)"

    __str__ = __repr__


def read_secret_file(path: str | Path) -> SecretValue:
    """Read a secret file byte for byte (as cryptsetup's --key-file does); ``-`` is stdin."""
    import sys

    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
        else:
            with open(path, "rb") as fh:
                data = fh.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"secret file {path} is larger than {MAX_SECRET_BYTES} bytes")
    if not data:
        raise SecretError(f"secret file {path} is empty")
    return SecretValue(data)


def parse_secret_spec(spec: str) -> tuple[str, str]:
    """``KEY=FILE`` → ``(KEY, FILE)``; KEY is a secret's uuid or usage."""
    key, sep, path = spec.partition("=")
    if not sep or not key or not path:
        raise SecretError(f"--secret expects KEY=FILE (KEY is the secret's uuid or usage), got {spec!r}")
    if _looks_like_uuid(key):
        key = key.lower().replace("-", "")
        key = f"{key[:8]}-{key[8:12]}-{key[12:16]}-{key[16:20]}-{key[20:]}"
    return key, path


def _looks_like_uuid(key: str) -> bool:
    return len(key.replace("-", "")) == 32 and all(c in "0123456789abcdefABCDEF-" for c in key)


def plaintext_for(binding: SecretBinding, value: SecretValue) -> bytes:
    """The bytes QEMU must end up holding: a passphrase as is, a Ceph key base64-decoded."""
    if binding.encoding == "raw":
        return value.value
    try:
        return base64.b64decode(value.value.strip(), validate=True)
    except ValueError:
        raise SecretError(f"{binding.ref.describe()} must hold a base64 key (as `ceph auth get-key` prints)") from None


def seal(plaintext: bytes, master_key: bytes, keyid: str, iv: bytes | None = None) -> dict[str, Any]:
    """QEMU ``secret`` properties carrying ``plaintext`` encrypted under ``master_key``."""
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    if len(master_key) != 32:
        raise SecretError(f"master key must be 32 bytes (AES-256), got {len(master_key)}")
    iv = iv if iv is not None else os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize()
    enc = Cipher(algorithms.AES(master_key), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    return {
        "data": base64.b64encode(ciphertext).decode(),
        "keyid": keyid,
        "iv": base64.b64encode(iv).decode(),
        "format": "base64",
    }


def secret_properties(
    binding: SecretBinding,
    value: SecretValue,
    master_key: tuple[str, bytes] | None,
) -> dict[str, Any]:
    """``data``/``format`` (and ``keyid``/``iv`` when sealed) for one secret object."""
    plain = plaintext_for(binding, value)
    if master_key is not None:
        return seal(plain, master_key[1], master_key[0])
    return {"data": base64.b64encode(plain).decode(), "format": "base64"}


def lookup(values: Mapping[str, SecretValue], binding: SecretBinding) -> SecretValue | None:
    """Find a secret's value by uuid or usage."""
    ref = binding.ref
    for key in (ref.uuid, ref.usage):
        if key is not None and key in values:
            return values[key]
    return None
