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


def _digest_for(header: Header, slot: Keyslot) -> Digest:
    for dig in header.digests:
        if slot.index in dig.keyslots:
            return dig
    raise LuksFormatError(f"keyslot {slot.index} is not assigned to any digest")


def open_keyslot(header: Header, slot: Keyslot, passphrase: bytes) -> bytes | None:
    """Return the volume key if ``passphrase`` opens ``slot``, else None."""
    if slot.type not in ("luks1", "luks2"):
        raise LuksUnsupportedError(f"keyslot {slot.index} has unsupported type {slot.type!r}")
    if slot.kdf.type == "invalid":
        raise LuksFormatError(f"keyslot {slot.index} has an invalid KDF section")
    spec = parse_cipher(slot.area_cipher)
    spec.check_key_size(slot.area_key_bytes)
    dig = _digest_for(header, slot)
    size = material_size(slot.key_bytes, slot.stripes)
    if slot.stripes < 1 or slot.key_bytes < 1 or size > slot.area_size:
        raise LuksFormatError(f"keyslot {slot.index} area is too small for its key material")
    if slot.area_offset + size > len(header.metadata):
        raise LuksFormatError(f"keyslot {slot.index} key material lies beyond the end of the device")
    derived = slot.kdf.derive(passphrase, slot.area_key_bytes)
    encrypted = header.metadata[slot.area_offset:slot.area_offset + size]
    material = bytes(crypt_sectors(spec, derived, encrypted, sector_size=SECTOR, first_iv=0, encrypt=False))
    key = af_merge(material, slot.key_bytes, slot.stripes, slot.af_hash)
    return key if digest_matches(dig, key) else None


def candidate_slots(header: Header, keyslot: int | None = None) -> list[Keyslot]:
    """Keyslots to try, in cryptsetup's order (priority 2 first; priority 0 only when named)."""
    slots = list(header.keyslots)
    if keyslot is not None:
        return [s for s in slots if s.index == keyslot]
    return [s for s in slots if s.priority == 2] + [s for s in slots if s.priority == 1]


def unlock_header(header: Header, passphrase: bytes, keyslot: int | None = None) -> VolumeKey:
    """Try each keyslot; raise WrongPassphraseError when none opens."""
    slots = candidate_slots(header, keyslot)
    if not slots:
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
