"""Typed model of a parsed LUKS1/LUKS2 header, shared by both versions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hotluks.errors import LuksFormatError
from hotluks.luks.kdf import KdfParams

#: reads ``length`` bytes at ``offset`` of the metadata device
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Keyslot:
    """One keyslot: where its key material lives and how to open it."""

    index: int
    kdf: KdfParams
    area_offset: int  # bytes from the start of the metadata device
    area_size: int  # bytes
    area_cipher: str  # dm-crypt spec of the key material encryption
    area_key_bytes: int
    key_bytes: int  # size of the volume key it stores
    stripes: int
    af_hash: str
    priority: int = 1  # LUKS2: 0 ignore, 1 normal, 2 prefer
    type: str = "luks2"


@dataclass(frozen=True)
class Digest:
    """A volume-key digest (LUKS1 mk-digest or a LUKS2 ``pbkdf2`` digest)."""

    index: int
    type: str
    hash: str
    iterations: int
    salt: bytes
    value: bytes
    keyslots: tuple[int, ...]
    segments: tuple[int, ...]


@dataclass(frozen=True)
class Segment:
    """The encrypted data area."""

    index: int
    type: str
    offset: int  # bytes from the start of the data device
    size: int | None  # bytes; None = to the end of the device ("dynamic")
    iv_tweak: int
    encryption: str
    sector_size: int
    integrity: str | None = None  # LUKS2 authenticated encryption (dm-integrity) type


@dataclass(frozen=True)
class Header:
    """A parsed, validated LUKS header (no secrets).

    ``metadata`` holds the header bytes read so far (at most a few MiB); keyslot
    material beyond it is read on demand through ``reader`` (so a huge sparse
    "header" never costs its size in memory).
    """

    version: int
    uuid: str
    cipher: str  # dm-crypt spec of the data segment, e.g. aes-xts-plain64
    key_bytes: int
    hash: str  # LUKS1 hash-spec / LUKS2 digest hash
    keyslots: tuple[Keyslot, ...]
    digests: tuple[Digest, ...]
    segments: tuple[Segment, ...]
    metadata_size: int  # bytes the header + keyslot areas occupy
    metadata: bytes = field(repr=False)
    label: str = ""
    subsystem: str = ""
    seqid: int = 0
    hdr_size: int = 0  # LUKS2 binary header + JSON area
    keyslots_size: int = 0
    requirements: tuple[str, ...] = ()
    flags: tuple[str, ...] = ()
    json: dict[str, Any] | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()
    device_size: int = 0  # bytes of the metadata device (0: unknown, ``len(metadata)``)
    reader: Reader | None = field(default=None, repr=False, compare=False)

    def read_metadata(self, offset: int, length: int) -> bytes:
        """Bytes of the metadata device (keyslot material), from memory or read on demand."""
        size = self.device_size or len(self.metadata)
        if offset < 0 or length < 0 or offset + length > size:
            raise LuksFormatError("keyslot material lies beyond the end of the device")
        if offset + length <= len(self.metadata):
            return self.metadata[offset:offset + length]
        if self.reader is None:
            raise LuksFormatError("keyslot material lies beyond the data read")
        data = self.reader(offset, length)
        if len(data) != length:
            raise LuksFormatError("short read of keyslot material")
        return data

    @property
    def data_segment(self) -> Segment:
        """The (first) crypt segment."""
        for seg in self.segments:
            if seg.type == "crypt":
                return seg
        return self.segments[0]

    @property
    def payload_offset(self) -> int:
        """Byte offset of the data on the payload device."""
        return self.data_segment.offset

    @property
    def detached(self) -> bool:
        """True when the data starts at offset 0 (the header lives elsewhere)."""
        return self.payload_offset == 0

    @property
    def sector_size(self) -> int:
        """Encryption sector size of the data segment."""
        return self.data_segment.sector_size

    @property
    def read_only(self) -> bool:
        """Unknown mandatory requirements: the header may be read, not changed or activated."""
        return bool(self.requirements)


@dataclass(frozen=True)
class VolumeKey:
    """An unlocked volume key; ``repr`` never shows the key."""

    key: bytes = field(repr=False)
    keyslot: int
    header: Header = field(repr=False)

    def __str__(self) -> str:
        return f"<volume key: {len(self.key) * 8} bits, keyslot {self.keyslot}>"
