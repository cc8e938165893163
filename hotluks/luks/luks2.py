"""LUKS2 on-disk header: both binary copies, checksums, recovery from either copy, packing. Pure.

The JSON rules live in :mod:`hotluks.luks.luks2_json`. Reading follows
cryptsetup: the primary copy at 0; the secondary right after it, or — when the
primary's binary header is unusable (magic wiped, checksum wrong) — at every
offset a 16 KiB … 4 MiB metadata size puts it; of two valid copies the higher
seqid wins.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from hotluks.errors import LuksFormatError
from hotluks.luks.kdf import KdfParams, digest, hash_size
from hotluks.luks.luks2_json import BIN_SIZE, HDR_SIZES, Invalid, validate_area
from hotluks.luks.luks2_json import validate_json as _validate_json
from hotluks.luks.metadata import Digest, Header, Keyslot, Segment

__all__ = ["BIN_SIZE", "HDR_SIZES", "MAGIC1", "MAGIC2", "checksum", "is_luks2", "pack", "parse", "validate_json"]

MAGIC1 = b"LUKS\xba\xbe"
MAGIC2 = b"SKUL\xba\xbe"
MAX_SEQID = (1 << 64) - 1
_BIN = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
CSUM_OFFSET = 448
CSUM_SIZE = 64
#: cryptsetup tries keyslots 0..31, digests 0..7 only
MAX_KEYSLOTS = 32
MAX_DIGESTS = 8


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def validate_json(doc: Any, json_area_size: int) -> dict[str, Any]:
    """Validate a JSON document with cryptsetup's rules; LuksFormatError when it breaks one."""
    try:
        return _validate_json(doc, json_area_size)
    except Invalid as exc:
        raise LuksFormatError(f"invalid LUKS2 metadata: {exc}") from None


def checksum(alg: str, area: bytes) -> bytes:
    """Checksum of one header copy (binary header with csum zeroed + JSON area)."""
    zeroed = area[:CSUM_OFFSET] + bytes(CSUM_SIZE) + area[CSUM_OFFSET + CSUM_SIZE:]
    return digest(alg, zeroed)


def _read_binary(data: bytes, offset: int, magic: bytes) -> tuple[dict[str, Any], bytes]:
    """Check one copy's binary header and checksum (cryptsetup's pre-JSON checks); return it and its JSON area."""
    if len(data) < offset + BIN_SIZE:
        raise Invalid("device too small for a LUKS2 header")
    (mg, version, hdr_size, seqid, label, csum_alg, _salt, uuid, subsystem, hdr_offset, _pad,
     csum) = _BIN.unpack_from(data, offset)
    if mg != magic:
        raise Invalid("no LUKS2 magic")
    if version != 2:
        raise Invalid(f"unsupported LUKS version {version}")
    if hdr_offset != offset:
        raise Invalid("header offset does not match its position")
    if not HDR_SIZES[0] <= hdr_size <= HDR_SIZES[-1]:
        raise Invalid(f"illegal LUKS2 header size {hdr_size}")
    if magic == MAGIC2 and offset != hdr_size:
        raise Invalid("secondary header offset does not match its size")
    if len(data) < offset + hdr_size:
        raise Invalid("device too small for the LUKS2 metadata")
    alg = _cstr(csum_alg)
    if not hash_size(alg):
        raise Invalid(f"unknown checksum algorithm {alg!r}")
    area = data[offset:offset + hdr_size]
    try:
        want = checksum(alg, area)
    except Exception as exc:  # a checksum hash cryptsetup knows but the engine cannot compute
        raise Invalid(f"checksum algorithm {alg!r} is not supported") from exc
    if csum[:len(want)] != want:
        raise Invalid("header checksum mismatch")
    fields = {"hdr_size": hdr_size, "seqid": seqid, "label": _cstr(label), "uuid": _cstr(uuid),
              "subsystem": _cstr(subsystem), "csum_alg": alg}
    return fields, area[BIN_SIZE:]


Copy = tuple[dict[str, Any], dict[str, Any]]


def _read_json(fields: dict[str, Any], json_area: bytes) -> Copy:
    doc = validate_area(json_area)
    return fields, _validate_json(doc, fields["hdr_size"] - BIN_SIZE)


def secondary_offsets(data: bytes) -> list[int]:
    """Offsets where a secondary header's magic is present (for signature detection)."""
    return [off for off in HDR_SIZES if data[off:off + 6] == MAGIC2]


def is_luks2(data: bytes) -> bool:
    """True when the data holds a LUKS version 2 signature at 0 or at a secondary-header offset."""
    if len(data) >= 8 and data[:6] in (MAGIC1, MAGIC2) and data[6:8] == b"\0\x02":
        return True
    return any(data[off + 6:off + 8] == b"\0\x02" for off in secondary_offsets(data))


def parse(data: bytes) -> Header:
    """Parse both copies of a LUKS2 header; the valid copy with the higher seqid wins."""
    errors: list[str] = []
    primary: Copy | None = None
    secondary: Copy | None = None
    primary_size = 0
    try:
        fields, area = _read_binary(data, 0, MAGIC1)
        primary_size = fields["hdr_size"]
        primary = _read_json(fields, area)
    except Invalid as exc:
        errors.append(f"primary header: {exc}")
    for off in [primary_size] if primary_size else list(HDR_SIZES):
        try:
            fields, area = _read_binary(data, off, MAGIC2)
        except Invalid as exc:
            if primary_size:
                errors.append(f"secondary header: {exc}")
            continue
        try:
            secondary = _read_json(fields, area)
        except Invalid as exc:
            errors.append(f"secondary header: {exc}")
        break
    chosen = primary
    warnings: list[str] = []
    if primary and secondary:
        if secondary[0]["seqid"] > primary[0]["seqid"]:
            chosen = secondary
            warnings.append("the secondary header is newer than the primary")
        elif secondary[0]["seqid"] < primary[0]["seqid"]:
            warnings.append("the secondary header is older than the primary")
    elif secondary:
        chosen = secondary
    if chosen is None:
        raise LuksFormatError("invalid LUKS2 header: " + ("; ".join(errors) or "no valid copy"))
    warnings.extend(errors)
    return _to_header(data, chosen[0], chosen[1], tuple(warnings))


def _priority(slot: dict[str, Any]) -> int:
    """0 ignore, 1 normal, 2 prefer; cryptsetup never tries other values (it does not refuse them)."""
    prio = slot.get("priority", 1)
    return prio if isinstance(prio, int) and not isinstance(prio, bool) else -1


def _kdf(kdf: dict[str, Any]) -> KdfParams:
    ktype = kdf.get("type")
    salt = _b64(kdf.get("salt", "")) if isinstance(kdf.get("salt"), str) else None
    if not isinstance(ktype, str) or salt is None:
        return KdfParams("invalid", b"")
    if ktype == "argon2":  # legacy name cryptsetup accepts
        ktype = "argon2i"
    if ktype == "pbkdf2":
        return KdfParams("pbkdf2", salt, hash=str(kdf.get("hash", "")), iterations=int(kdf.get("iterations", 0)))
    if ktype in ("argon2i", "argon2id"):
        return KdfParams(ktype, salt, time=int(kdf.get("time", 0)), memory=int(kdf.get("memory", 0)),
                         cpus=int(kdf.get("cpus", 0)))
    return KdfParams(ktype, salt)


def _to_header(data: bytes, fields: dict[str, Any], doc: dict[str, Any], warnings: tuple[str, ...]) -> Header:
    keyslots: list[Keyslot] = []
    for key, slot in sorted(doc["keyslots"].items(), key=lambda kv: int(kv[0])):
        if slot.get("type") != "luks2":
            keyslots.append(Keyslot(int(key), KdfParams(str(slot["type"]), b""), 0, 0, "", 0,
                                    slot["key_size"], 0, "", 0, type=str(slot["type"])))
            continue
        area, af = slot["area"], slot["af"]
        keyslots.append(Keyslot(
            index=int(key), kdf=_kdf(slot["kdf"]), area_offset=int(area["offset"] or 0),
            area_size=int(area["size"] or 0), area_cipher=area["encryption"],
            area_key_bytes=area["key_size"], key_bytes=slot["key_size"], stripes=af["stripes"],
            af_hash=af["hash"], priority=_priority(slot), type="luks2"))
    digests: list[Digest] = []
    for key, dig in sorted(doc["digests"].items(), key=lambda kv: int(kv[0])):
        salt = _b64(dig["salt"]) if isinstance(dig.get("salt"), str) else None
        value = _b64(dig["digest"]) if isinstance(dig.get("digest"), str) else None
        iters = dig.get("iterations")
        valid = dig["type"] == "pbkdf2" and salt is not None and value is not None and \
            isinstance(dig.get("hash"), str) and isinstance(iters, int) and not isinstance(iters, bool)
        digests.append(Digest(
            int(key), dig["type"] if valid else f"invalid {dig['type']}", str(dig.get("hash", "")),
            int(iters) if valid and isinstance(iters, int) else 0, salt or b"", value or b"",
            tuple(int(k) for k in dig["keyslots"]), tuple(int(s) for s in dig["segments"])))
    segments: list[Segment] = []
    for key, seg in sorted(doc["segments"].items(), key=lambda kv: int(kv[1]["offset"] or 0)):
        size = None if seg["size"] == "dynamic" else int(seg["size"])
        integrity = seg.get("integrity")
        segments.append(Segment(int(key), seg["type"], int(seg["offset"] or 0), size,
                                int(seg.get("iv_tweak") or 0), str(seg.get("encryption", "")),
                                int(seg.get("sector_size", 512)),
                                str(integrity["type"]) if isinstance(integrity, dict) else None))
    config = doc["config"]
    reqs = tuple(config.get("requirements", {}).get("mandatory", []))
    hdr_size = fields["hdr_size"]
    keyslots_size = int(config["keyslots_size"])
    meta_size = 2 * hdr_size + keyslots_size
    seg = next((s for s in segments if s.type == "crypt"), segments[0])
    vk_digest = next((d for d in digests if seg.index in d.segments), None)
    bound = set(vk_digest.keyslots) if vk_digest else set()
    return Header(
        version=2, uuid=fields["uuid"], cipher=seg.encryption,
        key_bytes=next((k.key_bytes for k in keyslots if k.index in bound), 0),
        hash=vk_digest.hash if vk_digest else "", keyslots=tuple(keyslots), digests=tuple(digests),
        segments=tuple(segments), metadata_size=meta_size, metadata=bytes(data[:meta_size]),
        label=fields["label"], subsystem=fields["subsystem"], seqid=fields["seqid"],
        hdr_size=hdr_size, keyslots_size=keyslots_size, requirements=reqs,
        flags=tuple(config.get("flags", [])), json=doc, warnings=warnings, device_size=len(data))


def pack(doc: dict[str, Any], *, hdr_size: int, seqid: int, uuid: str, label: str = "",
         subsystem: str = "", salts: tuple[bytes, bytes] | None = None) -> bytes:
    """Serialise both header copies (2 × ``hdr_size`` bytes) with fresh checksums."""
    text = json.dumps(doc, separators=(",", ":")).encode()
    json_size = hdr_size - BIN_SIZE
    if len(text) >= json_size:
        raise LuksFormatError("LUKS2 JSON metadata does not fit in the header")
    json_area = text + bytes(json_size - len(text))
    out = b""
    for index, (magic, offset) in enumerate(((MAGIC1, 0), (MAGIC2, hdr_size))):
        salt = salts[index] if salts else bytes(64)
        binary = _BIN.pack(magic, 2, hdr_size, seqid, label.encode(), b"sha256", salt, uuid.encode(),
                           subsystem.encode(), offset, bytes(184), bytes(64))
        area = binary + bytes(BIN_SIZE - len(binary)) + json_area
        csum = checksum("sha256", area)
        out += area[:CSUM_OFFSET] + csum + bytes(CSUM_SIZE - len(csum)) + area[CSUM_OFFSET + CSUM_SIZE:]
    return out
