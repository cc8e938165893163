"""Building headers and changing keyslots, as pure functions over bytes.

Randomness is passed in (``rand(n) -> bytes``) so the functions stay pure and
testable; the I/O layer supplies ``os.urandom``.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable
from dataclasses import dataclass

from hotluks.errors import LuksFormatError, LuksUnsupportedError, ReadOnlyHeaderError
from hotluks.luks import luks1, luks2
from hotluks.luks.kdf import KdfParams, hash_digest_size, pbkdf2
from hotluks.luks.keyslots import material_size, seal_keyslot
from hotluks.luks.metadata import Header
from hotluks.luks.sectors import parse_cipher

Rand = Callable[[int], bytes]
LUKS1_PAYLOAD_SECTORS = 4096  # 2 MiB, cryptsetup's default alignment
LUKS2_HDR_SIZE = 0x4000
LUKS2_KEYSLOTS_SIZE = (16 << 20) - 2 * LUKS2_HDR_SIZE
MAX_LUKS2_KEYSLOTS = 32


@dataclass(frozen=True)
class Metadata:
    """Header bytes to write at offset 0 of the metadata device, and the data offset."""

    blob: bytes
    payload_offset: int


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def build_luks1(key: bytes, passphrase: bytes, *, cipher: str, hash_name: str, kdf_iterations: int,
                digest_iterations: int, uuid: str, detached: bool, rand: Rand) -> Metadata:
    """A LUKS1 header with keyslot 0 set (QEMU- and cryptsetup-compatible layout)."""
    spec = parse_cipher(cipher)
    spec.check_key_size(len(key))
    hash_digest_size(hash_name)
    offsets, end = luks1.layout(len(key))
    payload = 0 if detached else LUKS1_PAYLOAD_SECTORS
    if not detached and end > payload:
        raise LuksUnsupportedError("key too large for the default LUKS1 layout")
    mk_salt = rand(luks1.SALT_SIZE)
    mk_digest = pbkdf2(hash_name, key, mk_salt, digest_iterations, luks1.DIGEST_SIZE)
    salt = rand(luks1.SALT_SIZE)
    kdf = KdfParams("pbkdf2", salt, hash=hash_name, iterations=kdf_iterations)
    material = seal_keyslot(key, passphrase, kdf, spec.name, len(key), hash_name, luks1.STRIPES,
                            rand(len(key) * (luks1.STRIPES - 1)))
    slots = [luks1.RawSlot(luks1.KEY_DISABLED, 0, bytes(32), off, luks1.STRIPES) for off in offsets]
    slots[0] = luks1.RawSlot(luks1.KEY_ENABLED, kdf_iterations, salt, offsets[0], luks1.STRIPES)
    phdr = luks1.pack(cipher_name=spec.cipher, cipher_mode=spec.mode, hash_name=hash_name,
                      payload_sectors=payload, key_bytes=len(key), mk_digest=mk_digest, mk_salt=mk_salt,
                      mk_iterations=digest_iterations, uuid=uuid, slots=slots)
    size = payload * luks1.SECTOR if payload else -(-end * luks1.SECTOR // 4096) * 4096
    blob = bytearray(size)
    blob[:len(phdr)] = phdr
    blob[offsets[0] * luks1.SECTOR:offsets[0] * luks1.SECTOR + len(material)] = material
    return Metadata(bytes(blob), payload * luks1.SECTOR)


def _kdf_json(kdf: KdfParams) -> dict[str, object]:
    if kdf.type == "pbkdf2":
        return {"type": "pbkdf2", "hash": kdf.hash, "iterations": kdf.iterations, "salt": _b64(kdf.salt)}
    return {"type": kdf.type, "time": kdf.time, "memory": kdf.memory, "cpus": kdf.cpus, "salt": _b64(kdf.salt)}


def _area_size(key_bytes: int) -> int:
    return -(-material_size(key_bytes, luks1.STRIPES) // 4096) * 4096


def build_luks2(key: bytes, passphrase: bytes, *, cipher: str, kdf: KdfParams, digest_hash: str,
                digest_iterations: int, uuid: str, detached: bool, sector_size: int, rand: Rand,
                label: str = "") -> Metadata:
    """A LUKS2 header (both copies + keyslots area) with keyslot 0 set."""
    spec = parse_cipher(cipher)
    spec.check_key_size(len(key))
    if sector_size not in (512, 1024, 2048, 4096):
        raise LuksUnsupportedError(f"sector size {sector_size} is not supported (512, 1024, 2048, 4096)")
    hdr = LUKS2_HDR_SIZE
    data_offset = 0 if detached else 2 * hdr + LUKS2_KEYSLOTS_SIZE
    area_offset = 2 * hdr
    material = seal_keyslot(key, passphrase, kdf, spec.name, len(key), digest_hash, luks1.STRIPES,
                            rand(len(key) * (luks1.STRIPES - 1)))
    salt = rand(32)
    dig = pbkdf2(digest_hash, key, salt, digest_iterations, hash_digest_size(digest_hash))
    doc = {
        "keyslots": {"0": {
            "type": "luks2", "key_size": len(key),
            "af": {"type": "luks1", "stripes": luks1.STRIPES, "hash": digest_hash},
            "area": {"type": "raw", "offset": str(area_offset), "size": str(_area_size(len(key))),
                     "encryption": spec.name, "key_size": len(key)},
            "kdf": _kdf_json(kdf)}},
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": str(data_offset), "size": "dynamic",
                           "iv_tweak": "0", "encryption": spec.name, "sector_size": sector_size}},
        "digests": {"0": {"type": "pbkdf2", "keyslots": ["0"], "segments": ["0"], "hash": digest_hash,
                          "iterations": digest_iterations, "salt": _b64(salt), "digest": _b64(dig)}},
        "config": {"json_size": str(hdr - luks2.BIN_SIZE), "keyslots_size": str(LUKS2_KEYSLOTS_SIZE)},
    }
    headers = luks2.pack(doc, hdr_size=hdr, seqid=1, uuid=uuid, label=label, salts=(rand(64), rand(64)))
    blob = bytearray(2 * hdr + LUKS2_KEYSLOTS_SIZE)
    blob[:len(headers)] = headers
    blob[area_offset:area_offset + len(material)] = material
    return Metadata(bytes(blob), data_offset)


@dataclass(frozen=True)
class Write:
    """Bytes to write at an offset of the metadata device."""

    offset: int
    data: bytes


def ensure_writable(header: Header) -> None:
    if header.read_only:
        raise ReadOnlyHeaderError(
            f"header has unknown mandatory requirements ({', '.join(header.requirements)}): read-only")


def add_keyslot(header: Header, key: bytes, passphrase: bytes, kdf: KdfParams, rand: Rand,
                slot: int | None = None) -> tuple[int, list[Write]]:
    """Writes that add a keyslot for ``key`` opened by ``passphrase``, in a crash-safe order: the key
    material (in an area no header references yet), then the header (LUKS2: primary, then secondary)."""
    ensure_writable(header)
    if header.version == 1:
        raw = luks1.raw_slots(header.metadata)
        free = [i for i, s in enumerate(raw) if s.active != luks1.KEY_ENABLED]
        if slot is not None:
            free = [i for i in free if i == slot]
        if not free:
            raise LuksFormatError("no free LUKS1 keyslot" if slot is None else f"keyslot {slot} is in use")
        index = free[0]
        salt = rand(luks1.SALT_SIZE)
        k = KdfParams("pbkdf2", salt, hash=header.hash, iterations=kdf.iterations)
        material = seal_keyslot(key, passphrase, k, header.cipher, len(key), header.hash, luks1.STRIPES,
                                rand(len(key) * (luks1.STRIPES - 1)))
        new = luks1.RawSlot(luks1.KEY_ENABLED, kdf.iterations, salt, raw[index].offset, luks1.STRIPES)
        phdr = luks1.replace_slot(header.metadata[:luks1.PHDR_SIZE], index, new)
        return index, [Write(raw[index].offset * luks1.SECTOR, material), Write(0, phdr)]
    assert header.json is not None
    doc = copy.deepcopy(header.json)
    used = {int(k) for k in doc["keyslots"]}
    index = slot if slot is not None else min(set(range(MAX_LUKS2_KEYSLOTS)) - used, default=-1)
    if index < 0 or index in used:
        raise LuksFormatError("no free LUKS2 keyslot" if slot is None else f"keyslot {slot} is in use")
    seg = header.data_segment
    dig = next(d for d in header.digests if seg.index in d.segments)
    size = _area_size(len(key))
    start = 2 * header.hdr_size
    for a_off, a_size in sorted((int(s["area"]["offset"]), int(s["area"]["size"]))
                                for s in doc["keyslots"].values() if "area" in s):
        if start + size <= a_off:
            break
        start = max(start, a_off + a_size)
    if start + size > 2 * header.hdr_size + header.keyslots_size:
        raise LuksFormatError("no room left in the LUKS2 keyslots area")
    area_cipher = seg.encryption
    material = seal_keyslot(key, passphrase, kdf, area_cipher, len(key), dig.hash, luks1.STRIPES,
                            rand(len(key) * (luks1.STRIPES - 1)))
    doc["keyslots"][str(index)] = {
        "type": "luks2", "key_size": len(key),
        "af": {"type": "luks1", "stripes": luks1.STRIPES, "hash": dig.hash},
        "area": {"type": "raw", "offset": str(start), "size": str(size), "encryption": area_cipher,
                 "key_size": len(key)},
        "kdf": _kdf_json(kdf)}
    doc["digests"][str(dig.index)]["keyslots"].append(str(index))
    headers = _repack(header, doc, rand)
    return index, [Write(start, material), *_copies(headers, header.hdr_size)]


def _copies(headers: bytes, hdr_size: int) -> list[Write]:
    """The primary then the secondary LUKS2 copy, as separate writes (each made durable before the next)."""
    return [Write(0, headers[:hdr_size]), Write(hdr_size, headers[hdr_size:2 * hdr_size])]


def _repack(header: Header, doc: dict[str, object], rand: Rand) -> bytes:
    luks2.validate_json(doc, header.hdr_size - luks2.BIN_SIZE)
    return luks2.pack(doc, hdr_size=header.hdr_size, seqid=header.seqid + 1, uuid=header.uuid,
                      label=header.label, subsystem=header.subsystem, salts=(rand(64), rand(64)))


def remove_keyslot(header: Header, index: int, rand: Rand) -> list[Write]:
    """Writes that disable keyslot ``index`` and then wipe its key material (header first: a crash in
    between leaves a header whose remaining keyslots all open)."""
    ensure_writable(header)
    slot = next((s for s in header.keyslots if s.index == index), None)
    if slot is None:
        raise LuksFormatError(f"keyslot {index} is not active")
    wipe = Write(slot.area_offset, rand(material_size(slot.key_bytes, slot.stripes)))
    if header.version == 1:
        raw = luks1.raw_slots(header.metadata)[index]
        dead = luks1.RawSlot(luks1.KEY_DISABLED, 0, bytes(32), raw.offset, raw.stripes)
        return [Write(0, luks1.replace_slot(header.metadata[:luks1.PHDR_SIZE], index, dead)), wipe]
    assert header.json is not None
    doc = copy.deepcopy(header.json)
    del doc["keyslots"][str(index)]
    for section in ("digests", "tokens"):
        for item in doc[section].values():
            item["keyslots"] = [k for k in item["keyslots"] if k != str(index)]
    return [*_copies(_repack(header, doc, rand), header.hdr_size), wipe]
