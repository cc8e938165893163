"""LUKS2 on-disk header: both binary copies, checksums, strict JSON validation, packing. Pure.

The validation rules follow cryptsetup's (lib/luks2): numbered object keys,
64-bit values as decimal strings, keyslot areas inside the keyslots area and
not overlapping, segments aligned and referenced by a digest, config sizes
from the allowed set, and unknown mandatory requirements making the header
read-only.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any

from hotluks.errors import LuksFormatError
from hotluks.luks.kdf import KdfParams, digest, hash_size
from hotluks.luks.metadata import Digest, Header, Keyslot, Segment

MAGIC1 = b"LUKS\xba\xbe"
MAGIC2 = b"SKUL\xba\xbe"
BIN_SIZE = 4096
HDR_SIZES = tuple(0x4000 << i for i in range(9))  # 16 KiB … 4 MiB
MAX_KEYSLOTS_SIZE = 128 << 20
MAX_SEQID = (1 << 64) - 1
_BIN = struct.Struct(">6sHQQ48s32s64s40s48sQ184s64s")
CSUM_OFFSET = 448
CSUM_SIZE = 64


class _Invalid(Exception):
    """One header copy is invalid (internal; becomes LuksFormatError)."""


def _fail(msg: str) -> _Invalid:
    return _Invalid(msg)


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u64(value: Any, what: str) -> int:
    """A decimal-string 64-bit number, as cryptsetup's ``numbered`` + ``strtoull``."""
    if not isinstance(value, str) or not all(c in "0123456789" for c in value):
        raise _fail(f"{what} must be a decimal string")
    number = int(value) if value else 0
    if number > MAX_SEQID:
        raise _fail(f"{what} does not fit in 64 bits")
    return number


def _int(obj: dict[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _fail(f"{what} is missing \"{key}\" (int)")
    return value


def _str(obj: dict[str, Any], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise _fail(f"{what} is missing \"{key}\" (string)")
    return value


def _obj(obj: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise _fail(f"{what} is missing \"{key}\" (object)")
    return value


def _arr(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise _fail(f"{what} is missing \"{key}\" (array)")
    return value


def _numbered(section: dict[str, Any], what: str) -> None:
    for key in section:
        if not key.isdigit() or not key.isascii():
            raise _fail(f"{what} \"{key}\" is not in numbered form")


def _refs(values: list[Any], section: dict[str, Any], what: str) -> tuple[int, ...]:
    out = []
    for v in values:
        if not isinstance(v, str):
            raise _fail(f"illegal value type in {what} array")
        if not isinstance(section.get(v), dict):
            raise _fail(f"{what} array references missing {what[:-1]} {v!r}")
        out.append(int(v))
    return tuple(out)


def _b64(value: str) -> bytes | None:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_string_array(values: list[Any], what: str) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in values):
        raise _fail(f"{what} must contain only strings")
    return tuple(values)


def validate_json(doc: Any, json_area_size: int) -> dict[str, Any]:
    """Validate a LUKS2 JSON document against cryptsetup's rules; return it."""
    if not isinstance(doc, dict):
        raise _fail("LUKS2 metadata is not a JSON object")
    for name in ("keyslots", "tokens", "segments", "digests", "config"):
        if not isinstance(doc.get(name), dict):
            raise _fail(f"missing {name} section")
    keyslots: dict[str, Any] = doc["keyslots"]
    tokens: dict[str, Any] = doc["tokens"]
    segments: dict[str, Any] = doc["segments"]
    digests: dict[str, Any] = doc["digests"]
    config: dict[str, Any] = doc["config"]

    _numbered(tokens, "token")
    for key, tok in tokens.items():
        if not isinstance(tok, dict):
            raise _fail(f"token {key} is not an object")
        _str(tok, "type", f"token {key}")
        _refs(_arr(tok, "keyslots", f"token {key}"), keyslots, "keyslots")

    _numbered(digests, "digest")
    for key, dig in digests.items():
        if not isinstance(dig, dict):
            raise _fail(f"digest {key} is not an object")
        _str(dig, "type", f"digest {key}")
        _refs(_arr(dig, "keyslots", f"digest {key}"), keyslots, "keyslots")
        _refs(_arr(dig, "segments", f"digest {key}"), segments, "segments")

    _numbered(segments, "segment")
    if not segments:
        raise _fail("empty segments section")
    intervals: list[tuple[int, int | None, str]] = []
    for key, seg in segments.items():
        what = f"segment {key}"
        if not isinstance(seg, dict):
            raise _fail(f"{what} is not an object")
        stype = _str(seg, "type", what)
        offset = _u64(_str(seg, "offset", what), f"{what} offset")
        size_s = _str(seg, "size", what)
        size: int | None = None
        if size_s != "dynamic":
            size = _u64(size_s, f"{what} size")
            if not size:
                raise _fail(f"{what} has zero size")
        if offset % 512:
            raise _fail(f"{what} offset is not aligned to 512 bytes")
        if size is not None and size % 512:
            raise _fail(f"{what} size is not aligned to 512 bytes")
        if "flags" in seg:
            _check_string_array(_arr(seg, "flags", what), f"{what} flags")
        if stype == "crypt":
            iv = _str(seg, "iv_tweak", what)
            _str(seg, "encryption", what)
            sector = _int(seg, "sector_size", what)
            if "integrity" in seg:
                integ = _obj(seg, "integrity", what)
                for field in ("type", "journal_encryption", "journal_integrity"):
                    _str(integ, field, f"{what} integrity")
            if not 0 < sector <= 0xFFFFFFFF or sector % 512:
                raise _fail(f"{what} has an illegal sector size {sector}")
            _u64(iv, f"{what} iv_tweak")
            if size is not None and size % sector:
                raise _fail(f"{what} size is not aligned to its sector size")
            if not any(isinstance(d, dict) and key in d.get("segments", []) for d in digests.values()):
                raise _fail(f"{what} is not assigned to any digest")
        intervals.append((offset, size, key))
    ordered = sorted(intervals, key=lambda i: i[0])
    for (off_a, size_a, key_a), (off_b, _, key_b) in zip(ordered, ordered[1:]):
        if size_a is None:
            raise _fail(f"segment {key_a} is dynamic but is followed by segment {key_b}")
        if off_a + size_a > off_b:
            raise _fail(f"segments {key_a} and {key_b} overlap")

    _numbered(keyslots, "keyslot")
    for key, slot in keyslots.items():
        what = f"keyslot {key}"
        if not isinstance(slot, dict):
            raise _fail(f"{what} is not an object")
        _str(slot, "type", what)
        if not 0 <= _int(slot, "key_size", what) <= 0xFFFFFFFF:
            raise _fail(f"{what} has an illegal key_size")

    json_size = _u64(_str(config, "json_size", "config"), "config json_size")
    keyslots_size = _u64(_str(config, "keyslots_size", "config"), "config keyslots_size")
    metadata_size = json_size + BIN_SIZE
    if metadata_size not in HDR_SIZES:
        raise _fail(f"unsupported LUKS2 header size {metadata_size}")
    if keyslots_size % 4096 or keyslots_size > MAX_KEYSLOTS_SIZE:
        raise _fail(f"unsupported LUKS2 keyslots size {keyslots_size}")
    crypt_offsets = [o for o, _, k in intervals if segments[k].get("type") == "crypt"]
    first = 0 if not crypt_offsets or 0 in crypt_offsets else min(crypt_offsets)
    if first and (first < keyslots_size or first - keyslots_size < 2 * metadata_size):
        raise _fail(f"keyslots area ({keyslots_size} bytes) overlaps the data at offset {first}")
    if "flags" in config:
        _check_string_array(_arr(config, "flags", "config"), "config flags")
    if "requirements" in config:
        reqs = _obj(config, "requirements", "config")
        if "mandatory" in reqs:
            _check_string_array(_arr(reqs, "mandatory", "requirements"), "requirements mandatory")

    areas_end = 2 * metadata_size + keyslots_size
    areas: list[tuple[int, int, str]] = []
    for key, slot in keyslots.items():
        area = _obj(slot, "area", f"keyslot {key}")
        off = _u64(_str(area, "offset", f"keyslot {key} area"), f"keyslot {key} area offset")
        length = _u64(_str(area, "size", f"keyslot {key} area"), f"keyslot {key} area size")
        if off < 2 * metadata_size:
            raise _fail(f"keyslot {key} area offset {off} is inside the metadata")
        if not length:
            raise _fail(f"keyslot {key} area has zero length")
        if off + length > areas_end:
            raise _fail(f"keyslot {key} area overflows the keyslots area")
        areas.append((off, length, key))
    for off, _length, key in areas:
        for off2, length2, key2 in areas:
            if key != key2 and off2 <= off < off2 + length2:
                raise _fail(f"keyslot areas {key} and {key2} overlap")

    if json_size != json_area_size:
        raise _fail("JSON area size does not match the binary header")
    if len(json.dumps(doc, separators=(",", ":"))) > json_area_size:
        raise _fail("JSON does not fit in its area")

    for key, slot in keyslots.items():
        if slot.get("type") == "luks2":
            _validate_luks2_keyslot(slot, f"keyslot {key}")
    return doc


def _validate_luks2_keyslot(slot: dict[str, Any], what: str) -> None:
    kdf = _obj(slot, "kdf", what)
    af = _obj(slot, "af", what)
    area = _obj(slot, "area", what)
    ktype = _str(kdf, "type", f"{what} kdf")
    # cryptsetup drops unexpected KDF fields on load (keyslot repair) instead of refusing them.
    if ktype == "pbkdf2":
        _str(kdf, "hash", what)
        _int(kdf, "iterations", what)
        _str(kdf, "salt", what)
    elif ktype in ("argon2i", "argon2id"):
        for f in ("time", "memory", "cpus"):
            _int(kdf, f, what)
        _str(kdf, "salt", what)
    if _str(af, "type", f"{what} af") != "luks1":
        raise _fail(f"{what} has an unknown AF type")
    _str(af, "hash", f"{what} af")
    _int(af, "stripes", f"{what} af")
    if _str(area, "type", f"{what} area") != "raw":
        raise _fail(f"{what} has an unknown area type")
    _str(area, "encryption", f"{what} area")
    _int(area, "key_size", f"{what} area")
    if "priority" in slot:
        prio = slot["priority"]
        if not isinstance(prio, int) or isinstance(prio, bool) or not 0 <= prio <= 2:
            raise _fail(f"{what} has an illegal priority")


def checksum(alg: str, area: bytes) -> bytes:
    """Checksum of one header copy (binary header with csum zeroed + JSON area)."""
    zeroed = area[:CSUM_OFFSET] + bytes(CSUM_SIZE) + area[CSUM_OFFSET + CSUM_SIZE:]
    return digest(alg, zeroed)


def _read_copy(data: bytes, offset: int, magic: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse and validate one header copy; return (binary fields, JSON)."""
    if len(data) < offset + BIN_SIZE:
        raise _fail("device too small for a LUKS2 header")
    (mg, version, hdr_size, seqid, label, csum_alg, _salt, uuid, subsystem, hdr_offset, _pad,
     csum) = _BIN.unpack_from(data, offset)
    if mg != magic:
        raise _fail("no LUKS2 magic")
    if version != 2:
        raise _fail(f"unsupported LUKS version {version}")
    if hdr_size not in HDR_SIZES:
        raise _fail(f"illegal LUKS2 header size {hdr_size}")
    if hdr_offset != offset:
        raise _fail("header offset does not match its position")
    if len(data) < offset + hdr_size:
        raise _fail("device too small for the LUKS2 metadata")
    alg = _cstr(csum_alg)
    if not hash_size(alg):
        raise _fail(f"unknown checksum algorithm {alg!r}")
    area = data[offset:offset + hdr_size]
    try:
        want = checksum(alg, area)
    except Exception as exc:  # unsupported checksum hash
        raise _fail(f"checksum algorithm {alg!r} is not supported") from exc
    if csum[:len(want)] != want:
        raise _fail("header checksum mismatch")
    json_area = area[BIN_SIZE:]
    text = json_area.split(b"\0", 1)[0]
    try:
        doc = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(f"JSON metadata is not valid: {exc.__class__.__name__}") from None
    validate_json(doc, hdr_size - BIN_SIZE)
    fields = {"hdr_size": hdr_size, "seqid": seqid, "label": _cstr(label), "uuid": _cstr(uuid),
              "subsystem": _cstr(subsystem), "csum_alg": alg}
    return fields, doc


def is_luks2(data: bytes) -> bool:
    """True when the data starts with a LUKS version 2 signature (either copy)."""
    return len(data) >= 8 and data[:6] in (MAGIC1, MAGIC2) and data[6:8] == b"\0\x02"


def parse(data: bytes) -> Header:
    """Parse both copies of a LUKS2 header; the valid copy with the higher seqid wins."""
    errors: list[str] = []
    primary: tuple[dict[str, Any], dict[str, Any]] | None = None
    secondary: tuple[dict[str, Any], dict[str, Any]] | None = None
    try:
        primary = _read_copy(data, 0, MAGIC1)
    except _Invalid as exc:
        errors.append(f"primary header: {exc}")
    offsets = [primary[0]["hdr_size"]] if primary else list(HDR_SIZES)
    for off in offsets:
        if data[off:off + 6] != MAGIC2:
            if primary:
                errors.append("secondary header: no LUKS2 magic")
            continue
        try:
            secondary = _read_copy(data, off, MAGIC2)
            break
        except _Invalid as exc:
            errors.append(f"secondary header: {exc}")
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
        raise LuksFormatError("invalid LUKS2 header: " + "; ".join(errors))
    warnings.extend(e for e in errors if chosen)
    return _to_header(data, chosen[0], chosen[1], tuple(warnings))


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
            af_hash=af["hash"], priority=int(slot.get("priority", 1)), type="luks2"))
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
    return Header(
        version=2, uuid=fields["uuid"], cipher=seg.encryption,
        key_bytes=next((k.key_bytes for k in keyslots if vk_digest and k.index in vk_digest.keyslots), 0),
        hash=vk_digest.hash if vk_digest else "", keyslots=tuple(keyslots), digests=tuple(digests),
        segments=tuple(segments), metadata_size=meta_size, metadata=bytes(data[:meta_size]),
        label=fields["label"], subsystem=fields["subsystem"], seqid=fields["seqid"],
        hdr_size=hdr_size, keyslots_size=keyslots_size, requirements=reqs,
        flags=tuple(config.get("flags", [])), json=doc, warnings=warnings)


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
