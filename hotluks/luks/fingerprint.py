"""Header pinning: an identity of a LUKS header that survives keyslot changes but not a swap. Pure.

The fingerprint covers what binds the header to one volume key and one data
layout: the LUKS version, the data segment's cipher, sector size, offset, IV
tweak and integrity mode, and the volume-key digest bound to that segment (its
type, hash, iterations, salt and value; the digest also binds the key size). Adding, removing or
changing a keyslot, relabelling or changing the UUID leave all of these
alone; a header that unlocks a different volume key (a swapped header, even
with the same passphrase) has a different digest and salt, so a different
fingerprint. Re-encryption or a LUKS1→LUKS2 conversion changes it too, on purpose.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from hotluks.errors import LuksFormatError
from hotluks.luks.kdf import digest
from hotluks.luks.metadata import Digest, Header

ALGORITHM = "sha256"
DOMAIN = "hotluks-header-fingerprint-v1"
HEX_RE = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Fingerprint:
    """The fingerprint (``value``, lowercase hex) and the fields it was computed from."""

    value: str
    fields: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": ALGORITHM, "fingerprint": self.value, "fields": self.fields}


def segment_digest(header: Header) -> Digest:
    """The volume-key digest bound to the data segment."""
    seg = header.data_segment
    for dig in header.digests:
        if seg.index in dig.segments:
            return dig
    raise LuksFormatError("the LUKS header has no volume-key digest bound to its data segment")


def identity_fields(header: Header) -> dict[str, Any]:
    """The header fields the fingerprint covers (salt and digest as hex; no secrets in them)."""
    seg = header.data_segment
    dig = segment_digest(header)
    return {
        "version": header.version, "cipher": seg.encryption,
        "sector_size": seg.sector_size, "data_offset": seg.offset, "iv_tweak": seg.iv_tweak,
        "integrity": seg.integrity, "digest_type": dig.type, "digest_hash": dig.hash,
        "digest_iterations": dig.iterations, "digest_salt": dig.salt.hex(), "digest": dig.value.hex(),
    }


def fingerprint(header: Header) -> Fingerprint:
    """sha256 over a canonical encoding of :func:`identity_fields`."""
    fields = identity_fields(header)
    canonical = json.dumps({"domain": DOMAIN, **fields}, sort_keys=True, separators=(",", ":"))
    return Fingerprint(digest(ALGORITHM, canonical.encode()).hex(), fields)


def normalise(value: str) -> str:
    """A pinned fingerprint as lowercase hex without separators; ValueError when it is not 64 hex digits."""
    text = value.strip().lower()
    if text.startswith(f"{ALGORITHM}:"):
        text = text[len(ALGORITHM) + 1:]
    text = re.sub(r"[\s:]", "", text)
    if not HEX_RE.match(text):
        raise ValueError("a sha256 header fingerprint is 64 hexadecimal digits")
    return text


def matches(header: Header, expected: str) -> bool:
    """True when ``header`` has the pinned fingerprint ``expected``."""
    return fingerprint(header).value == normalise(expected)
