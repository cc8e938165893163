"""Secrets: how a disk names them, their values, where values come from, and sealing.

- :class:`SecretRef` names a secret (libvirt's uuid or usage); :class:`SecretValue`
  holds its bytes and never prints them; :class:`MasterKey` is the AES key QEMU holds.
- One representation: a value is the bytes as the user holds them — a passphrase as
  is, a Ceph key as the base64 text ``ceph auth get-key`` prints (what librados takes);
  :func:`plaintext_for` gives the bytes QEMU must end up holding.
- :func:`resolve` is the one place values are found: given ones by uuid or usage, else
  the management layer's store (libvirt), converted once to that representation.
- With a master key QEMU already holds (libvirt's ``masterKey0`` or one given to
  hotluks), the monitor only ever sees AES-256-CBC ciphertext, as libvirt does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from hotluks.errors import SecretError

if TYPE_CHECKING:  # pragma: no cover
    from pathlib import Path  # not at run time: the model (and so `plan`) imports this module

    from hotluks.plan.steps import SecretBinding

REDACTED = "<redacted>"
MAX_SECRET_BYTES = 64 * 1024
#: how long a secret pipe may stay silent before reading it fails
READ_WAIT = 10.0


@dataclass(frozen=True)
class SecretRef:
    """A libvirt secret named by uuid or usage. ``kind`` is passphrase, ceph or iscsi."""

    kind: Literal["passphrase", "ceph", "iscsi"]
    uuid: str | None = None
    usage: str | None = None

    @property
    def key(self) -> str:
        """How users name this secret on the command line (``--secret KEY=FILE``)."""
        return self.uuid if self.uuid is not None else str(self.usage)

    def describe(self) -> str:
        return f"{self.kind} secret {'uuid' if self.uuid else 'usage'} {self.key}"


@dataclass(frozen=True)
class MasterKey:
    """A 32-byte AES key the VM was started with as a ``secret`` object ``keyid``."""

    keyid: str
    key: bytes

    def __repr__(self) -> str:  # never show key bytes
        return f"MasterKey(keyid={self.keyid!r}, key=<{len(self.key)} bytes>)"


@dataclass(frozen=True)
class SecretValue:
    """Secret bytes that never print themselves."""

    value: bytes = b""

    def __repr__(self) -> str:
        return f"SecretValue(<{len(self.value)} bytes>)"

    __str__ = __repr__


def read_secret_file(path: str | Path, *, wait: float = READ_WAIT) -> SecretValue:
    """Read a secret file byte for byte (as cryptsetup's --key-file does); ``-`` is stdin.

    A pipe (``<(pass show vm)``) works; a FIFO nobody writes to is empty, and one whose
    writer stays silent fails after ``wait`` seconds, instead of blocking for ever.
    """
    import sys

    shown = str(path).encode("utf-8", "backslashreplace").decode()
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_SECRET_BYTES + 1)
        else:
            data = _read_bounded(path, wait)
    except OSError as exc:
        raise SecretError(f"cannot read secret file {shown}: {exc.strerror or exc}") from None
    except (ValueError, UnicodeError):  # NUL byte, unencodable name
        raise SecretError(f"cannot read secret file {shown}: not a usable file name") from None
    if len(data) > MAX_SECRET_BYTES:
        raise SecretError(f"secret file {shown} is larger than {MAX_SECRET_BYTES} bytes")
    if not data:
        raise SecretError(f"secret file {shown} is empty")
    return SecretValue(data)


def _read_bounded(path: str | Path, wait: float) -> bytes:
    """At most ``MAX_SECRET_BYTES + 1`` bytes, opened non-blocking, waiting at most ``wait`` s for data."""
    import select
    import stat
    import time

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise IsADirectoryError(21, "Is a directory")
        deadline = time.monotonic() + wait
        data = b""
        while len(data) <= MAX_SECRET_BYTES:
            try:
                chunk = os.read(fd, MAX_SECRET_BYTES + 1 - len(data))
            except BlockingIOError:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(110, f"no data within {wait:g}s") from None
                select.select([fd], [], [], left)
                continue
            if not chunk:
                break
            data += chunk
        return data
    finally:
        os.close(fd)


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
    import base64

    if binding.encoding == "raw":
        return value.value
    try:
        return base64.b64decode(value.value.strip(), validate=True)
    except ValueError:
        raise SecretError(f"{binding.ref.describe()} must hold a base64 key (as `ceph auth get-key` prints)") from None


def seal(plaintext: bytes, master_key: bytes, keyid: str, iv: bytes | None = None) -> dict[str, Any]:
    """QEMU ``secret`` properties carrying ``plaintext`` encrypted under ``master_key``."""
    import base64

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
    import base64

    plain = plaintext_for(binding, value)
    if master_key is not None:
        return seal(plain, master_key[1], master_key[0])
    return {"data": base64.b64encode(plain).decode(), "format": "base64"}


def value_for(values: Mapping[str, SecretValue], ref: SecretRef) -> SecretValue | None:
    """A secret's value among ``values`` (keyed by uuid or usage)."""
    for key in (ref.uuid, ref.usage):
        if key is not None and key in values:
            return values[key]
    return None


def lookup(values: Mapping[str, SecretValue], binding: SecretBinding) -> SecretValue | None:
    """Find a secret object's value by its secret's uuid or usage."""
    return value_for(values, binding.ref)


class SecretStore(Protocol):
    """Where values not given come from: a backend's management layer (libvirt's secrets)."""

    name: str
    stores_secrets: bool

    async def secret_value(self, ref: str) -> bytes | None:
        """The stored bytes (a Ceph key decoded, as libvirt holds it), or None."""


async def resolve(bindings: Iterable[SecretBinding], given: Mapping[str, SecretValue],
                  store: SecretStore | None = None) -> dict[str, SecretValue]:
    """Every binding's value: given (by uuid or usage), else read from ``store``.

    Stored values are turned into the one representation once, here: libvirt holds a
    Ceph key decoded (``secret-set-value --base64 KEY``), users hold it as base64 text.
    A missing value is a :class:`SecretError` naming the ``--secret`` to pass.
    """
    import base64

    values = dict(given)
    for binding in bindings:
        if value_for(values, binding.ref) is not None:
            continue
        raw = await store.secret_value(binding.ref.key) if store is not None else None
        if raw is None:
            where = " or define it as a libvirt secret" if store is not None and store.stores_secrets else ""
            raise SecretError(f"no value for {binding.ref.describe()}: pass --secret {binding.ref.key}=FILE{where}")
        values[binding.ref.key] = SecretValue(base64.b64encode(raw) if binding.encoding == "base64" else raw)
    return values
