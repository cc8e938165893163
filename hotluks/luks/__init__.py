"""The bundled LUKS engine: LUKS1/LUKS2 headers, keyslots and payload crypto on ``cryptography``.

Public API (all raise the typed errors of :mod:`hotluks.errors`; secrets never
appear in messages):

- ``open_header(path_or_bytes, *, header=None) -> Header`` — parse and validate
  (no passphrase). ``header`` names a detached header file; the result's
  ``payload_offset`` is 0 for detached headers.
- ``unlock(header_obj_or_path, passphrase: bytes, *, header=None, keyslot=None) -> VolumeKey``
  — WrongPassphraseError (exit 1), LuksFormatError / LuksUnsupportedError (exit 2).
- ``verify_passphrase(path, passphrase, *, header_path=None) -> None``.
- ``format_volume(device, passphrase, *, type="luks2"|"luks1", header=None,
  cipher="aes-xts-plain64", key_size=512, hash="sha256", kdf=None,
  sector_size=512, volume_key=None, uuid=None) -> VolumeKey`` — with
  ``header`` the header file is (re)created detached (payload offset 0) and
  ``device`` is not written. ``format_luks1`` / ``format_luks2`` fix ``type``.
  ``make_kdf("pbkdf2"|"argon2i"|"argon2id", iterations=…, iter_time_ms=…,
  memory_kib=…, parallel=…)`` builds the ``kdf`` argument.
- ``add_key(device, passphrase, new_passphrase, *, header=None, kdf=None, keyslot=None) -> int``
  and ``remove_key(device, passphrase, *, header=None) -> int``.
- ``decrypt_payload(device, out: IO[bytes], secret, *, header=None, progress=None) -> int``
  and ``encrypt_payload(src: IO[bytes], device, secret, *, header=None, progress=None) -> int``
  — streaming, sector-exact; ``secret`` is a passphrase or a ``VolumeKey``.

Only a keyslot bound (through its digest) to the data segment unlocks it.
``policy.enforce(header, allow_weak_header=False)`` refuses weak headers
(``cipher_null``, ECB, KDFs below cryptsetup's minimum) with WeakHeaderError.
Ciphers: aes, serpent, twofish (Botan, Debian's python3-botan), cast5; xts/cbc/ecb
with plain, plain64, essiv:<hash> (``blockciphers``, ``sectors``).

The pure core (``luks1``, ``luks2``, ``luks2_json``, ``keyslots``, ``create``,
``sectors``, ``kdf``, ``policy``, ``summary``) works on bytes; ``volume`` and
``payload`` are the thin file layer, ``signatures`` probes what a format would overwrite.
"""

from __future__ import annotations

from hotluks.luks.kdf import KdfParams
from hotluks.luks.metadata import Digest, Header, Keyslot, Segment, VolumeKey
from hotluks.luks.volume import (
    add_key,
    decrypt_payload,
    encrypt_payload,
    format_luks1,
    format_luks2,
    format_volume,
    make_kdf,
    open_header,
    remove_key,
    unlock,
    verify_passphrase,
)

__all__ = [
    "Digest", "Header", "KdfParams", "Keyslot", "Segment", "VolumeKey",
    "add_key", "decrypt_payload", "encrypt_payload", "format_luks1", "format_luks2",
    "format_volume", "make_kdf", "open_header", "remove_key", "unlock", "verify_passphrase",
]
