"""LUKS1 on-disk header: parse/validate (as strictly as cryptsetup) and pack. Pure."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hotluks.errors import LuksFormatError, LuksUnsupportedError
from hotluks.luks.kdf import KdfParams, hash_size
from hotluks.luks.metadata import Digest, Header, Keyslot, Segment

MAGIC = b"LUKS\xba\xbe"
PHDR_SIZE = 592
SECTOR = 512
NUM_KEYS = 8
STRIPES = 4000
KEY_ENABLED = 0x00AC71F3
KEY_DISABLED = 0x0000DEAD
ALIGN_KEYSLOTS = 4096
DIGEST_SIZE = 20
SALT_SIZE = 32
_HEAD = struct.Struct(">6sH32s32s32sII20s32sI40s")
_SLOT = struct.Struct(">II32sII")


def af_sectors(key_bytes: int, stripes: int = STRIPES) -> int:
    """Sectors one keyslot's AF material occupies."""
    return -(-key_bytes * stripes // SECTOR)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


@dataclass(frozen=True)
class RawSlot:
    """A LUKS1 keyslot as stored."""

    active: int
    iterations: int
    salt: bytes
    offset: int  # sectors
    stripes: int


def device_sectors(key_bytes: int, slots: list[RawSlot]) -> int:
    """Sectors the header + keyslot areas need (cryptsetup's device size check)."""
    last = max(slots, key=lambda s: s.offset)
    return last.offset + af_sectors(key_bytes, last.stripes)


def check_keyslots(key_bytes: int, payload: int, slots: list[RawSlot]) -> None:
    """cryptsetup's keyslot checks: stripes, header overlap, payload overlap, mutual overlap."""
    per = af_sectors(key_bytes)
    for i, s in enumerate(slots):
        if s.stripes != STRIPES:
            raise LuksFormatError(f"LUKS keyslot {i} is invalid: {s.stripes} stripes (must be {STRIPES})")
        if s.offset * SECTOR < PHDR_SIZE:
            raise LuksFormatError(f"LUKS keyslot {i} is invalid: key material overlaps the header")
        if payload and payload <= s.offset:
            raise LuksFormatError(f"LUKS keyslot {i} is invalid: key material beyond the data offset")
        if payload and payload < s.offset + per:
            raise LuksFormatError(f"LUKS keyslot {i} is invalid: key material overlaps the data area")
    order = sorted(range(NUM_KEYS), key=lambda i: slots[i].offset)
    for prev, nxt in zip(order, order[1:]):
        if slots[nxt].offset < slots[prev].offset + per:
            raise LuksFormatError(f"LUKS keyslot {prev} is invalid: it overlaps keyslot {nxt}")


def parse(data: bytes, device_size: int | None = None) -> Header:
    """Parse and validate a LUKS1 header from the start of ``data``.

    ``data`` holds at least the phdr; keyslot material beyond it is read later
    through the header's ``reader``. ``device_size`` is the metadata device size
    (defaults to ``len(data)``).
    """
    if len(data) < PHDR_SIZE:
        raise LuksFormatError("device is too small for a LUKS1 header")
    (magic, version, cname, cmode, hspec, payload, key_bytes, mk_digest, mk_salt,
     mk_iter, uuid) = _HEAD.unpack_from(data, 0)
    if magic != MAGIC:
        raise LuksFormatError("not a LUKS device (no LUKS magic)")
    if version != 1:
        raise LuksFormatError(f"unsupported LUKS version {version}")
    hash_name = _cstr(hspec).lower()
    if hash_size(hash_name) < DIGEST_SIZE:
        raise LuksUnsupportedError(f"LUKS hash {hash_name!r} is not supported")
    slots = [RawSlot(*_SLOT.unpack_from(data, _HEAD.size + i * _SLOT.size)) for i in range(NUM_KEYS)]
    check_keyslots(key_bytes, payload, slots)
    if not key_bytes:
        raise LuksFormatError("LUKS header has a zero key size")
    size = len(data) if device_size is None else device_size
    need = device_sectors(key_bytes, slots)
    if need > size // SECTOR:
        raise LuksFormatError(f"device is too small: LUKS1 header needs at least {need * SECTOR} bytes")
    cipher_name = _cstr(cname)
    cipher_mode = _cstr(cmode)
    if cipher_mode.startswith("ecb-"):
        cipher_mode = "ecb"
    spec = f"{cipher_name}-{cipher_mode}"
    warnings: list[str] = []
    keyslots: list[Keyslot] = []
    for i, s in enumerate(slots):
        if s.active == KEY_ENABLED:
            keyslots.append(Keyslot(
                index=i, kdf=KdfParams("pbkdf2", s.salt, hash=hash_name, iterations=s.iterations),
                area_offset=s.offset * SECTOR, area_size=af_sectors(key_bytes, s.stripes) * SECTOR,
                area_cipher=spec, area_key_bytes=key_bytes, key_bytes=key_bytes,
                stripes=s.stripes, af_hash=hash_name, type="luks1"))
        elif s.active != KEY_DISABLED:
            warnings.append(f"keyslot {i} has an invalid state 0x{s.active:08x}")
    digest = Digest(0, "pbkdf2", hash_name, mk_iter, mk_salt, mk_digest,
                    tuple(k.index for k in keyslots), (0,))
    segment = Segment(0, "crypt", payload * SECTOR, None, 0, spec, SECTOR)
    return Header(
        version=1, uuid=_cstr(uuid), cipher=spec, key_bytes=key_bytes, hash=hash_name,
        keyslots=tuple(keyslots), digests=(digest,), segments=(segment,),
        metadata_size=need * SECTOR, metadata=bytes(data[:need * SECTOR]),
        warnings=tuple(warnings), device_size=size)


def pack(*, cipher_name: str, cipher_mode: str, hash_name: str, payload_sectors: int,
         key_bytes: int, mk_digest: bytes, mk_salt: bytes, mk_iterations: int, uuid: str,
         slots: list[RawSlot]) -> bytes:
    """Serialise a LUKS1 phdr (592 bytes)."""
    head = _HEAD.pack(MAGIC, 1, cipher_name.encode(), cipher_mode.encode(), hash_name.encode(),
                      payload_sectors, key_bytes, mk_digest, mk_salt, mk_iterations, uuid.encode())
    return head + b"".join(_SLOT.pack(s.active, s.iterations, s.salt, s.offset, s.stripes) for s in slots)


def layout(key_bytes: int) -> tuple[list[int], int]:
    """cryptsetup's default keyslot offsets (sectors, 4 KiB aligned) and the end of the last area."""
    align = ALIGN_KEYSLOTS // SECTOR
    per = -(-af_sectors(key_bytes) // align) * align
    offsets = [align + i * per for i in range(NUM_KEYS)]
    return offsets, offsets[-1] + af_sectors(key_bytes)


def raw_slots(data: bytes) -> list[RawSlot]:
    """The eight keyslots of an already validated header."""
    return [RawSlot(*_SLOT.unpack_from(data, _HEAD.size + i * _SLOT.size)) for i in range(NUM_KEYS)]


def replace_slot(data: bytes, index: int, slot: RawSlot) -> bytes:
    """Return the phdr with keyslot ``index`` replaced."""
    off = _HEAD.size + index * _SLOT.size
    return data[:off] + _SLOT.pack(slot.active, slot.iterations, slot.salt, slot.offset, slot.stripes) + data[off + _SLOT.size:PHDR_SIZE]
