"""Opening and sealing keyslots: KDF → key-material decryption → AF merge → digest. Pure."""

from __future__ import annotations

import hmac

from hotluks.errors import LuksFormatError, LuksUnsupportedError, WrongPassphraseError
from hotluks.luks.kdf import KdfParams, af_merge, af_split, pbkdf2
from hotluks.luks.metadata import Digest, Header, Keyslot, VolumeKey
from hotluks.luks.sectors import crypt_sectors, parse_cipher

SECTOR = 512


def material_size(key_bytes: int, stripes: int) -> int:
    """Bytes of encrypted AF material, rounded up to whole 512-byte sectors."""
    return -(-key_bytes * stripes // SECTOR) * SECTOR


def digest_matches(dig: Digest, key: bytes) -> bool:
    """True when ``key`` matches the volume-key digest."""
    if dig.type != "pbkdf2" or not dig.value:
        raise LuksUnsupportedError(f"volume key digest type {dig.type!r} is not supported")
    candidate = pbkdf2(dig.hash, key, dig.salt, dig.iterations, len(dig.value))
    return hmac.compare_digest(candidate, dig.value)


#: cryptsetup tries keyslots 0..31 only
MAX_KEYSLOTS = 32
#: bounds on keyslot work for hostile headers (cryptsetup makes 4000 stripes, keys up to 512 bits)
MAX_KEY_BYTES = 512
MAX_STRIPES = 65536


def bound_digest(header: Header) -> Digest | None:
    """The digest that covers the data segment (the volume key's digest)."""
    seg = header.data_segment.index
    return next((d for d in header.digests if seg in d.segments), None)


def is_bound(header: Header, slot: Keyslot) -> bool:
    """True when ``slot`` belongs to the digest of the data segment (only such a keyslot unlocks it)."""
    dig = bound_digest(header)
    return dig is not None and slot.index in dig.keyslots


def open_keyslot(header: Header, slot: Keyslot, passphrase: bytes) -> bytes | None:
    """Return the volume key if ``passphrase`` opens ``slot`` (which must be bound to the data segment), else None."""
    if slot.type not in ("luks1", "luks2"):
        raise LuksUnsupportedError(f"keyslot {slot.index} has unsupported type {slot.type!r}")
    dig = bound_digest(header)
    if dig is None or slot.index not in dig.keyslots:
        raise LuksFormatError(f"keyslot {slot.index} is not assigned to the data segment's digest")
    if slot.kdf.type == "invalid":
        raise LuksFormatError(f"keyslot {slot.index} has an invalid KDF section")
    spec = parse_cipher(slot.area_cipher)
    spec.check_key_size(slot.area_key_bytes)
    if not 0 < slot.key_bytes <= MAX_KEY_BYTES or not 0 < slot.stripes <= MAX_STRIPES:
        raise LuksUnsupportedError(f"keyslot {slot.index} has {slot.key_bytes}-byte keys in {slot.stripes} stripes "
                                   f"(the engine takes at most {MAX_KEY_BYTES} bytes, {MAX_STRIPES} stripes)")
    size = material_size(slot.key_bytes, slot.stripes)
    if size > slot.area_size:
        raise LuksFormatError(f"keyslot {slot.index} area is too small for its key material")
    encrypted = header.read_metadata(slot.area_offset, size)
    derived = slot.kdf.derive(passphrase, slot.area_key_bytes)
    material = bytes(crypt_sectors(spec, derived, encrypted, sector_size=SECTOR, first_iv=0, encrypt=False))
    key = af_merge(material, slot.key_bytes, slot.stripes, slot.af_hash)
    return key if digest_matches(dig, key) else None


def candidate_slots(header: Header, keyslot: int | None = None) -> list[Keyslot]:
    """Keyslots to try, in cryptsetup's order: bound to the data segment, numbers 0..31,
    priority 2 first, then 1 (priority 0 only when named)."""
    dig = bound_digest(header)
    bound = set(dig.keyslots) if dig else set()
    slots = [s for s in header.keyslots if s.index in bound and s.index < MAX_KEYSLOTS]
    if keyslot is not None:
        return [s for s in slots if s.index == keyslot]
    return [s for s in slots if s.priority == 2] + [s for s in slots if s.priority == 1]


def unlock_header(header: Header, passphrase: bytes, keyslot: int | None = None) -> VolumeKey:
    """Try each keyslot bound to the data segment; WrongPassphraseError when none opens."""
    slots = candidate_slots(header, keyslot)
    if not slots:
        if keyslot is not None and any(s.index == keyslot for s in header.keyslots):
            raise WrongPassphraseError(f"keyslot {keyslot} is not assigned to the data segment; "
                                       "no key available with this passphrase")
        raise WrongPassphraseError("no usable keyslot" if keyslot is None else f"keyslot {keyslot} is not active")
    unsupported: LuksUnsupportedError | None = None
    for slot in slots:
        try:
            key = open_keyslot(header, slot, passphrase)
        except LuksUnsupportedError as exc:
            unsupported = exc
            continue
        if key is not None:
            return VolumeKey(key, slot.index, header)
    if unsupported is not None:
        raise LuksUnsupportedError(f"no supported keyslot opens with this passphrase ({unsupported})")
    raise WrongPassphraseError("no key available with this passphrase")


def seal_keyslot(key: bytes, passphrase: bytes, kdf: KdfParams, area_cipher: str,
                 area_key_bytes: int, af_hash: str, stripes: int, random: bytes) -> bytes:
    """Encrypted AF material for a new keyslot (``random``: (stripes-1)×len(key) bytes)."""
    spec = parse_cipher(area_cipher)
    spec.check_key_size(area_key_bytes)
    split = af_split(key, stripes, af_hash, random)
    padded = split + bytes(material_size(len(key), stripes) - len(split))
    derived = kdf.derive(passphrase, area_key_bytes)
    return bytes(crypt_sectors(spec, derived, padded, sector_size=SECTOR, first_iv=0, encrypt=True))
