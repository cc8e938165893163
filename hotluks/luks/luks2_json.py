"""LUKS2 JSON metadata validation with cryptsetup's rules (lib/luks2). Pure.

Every rule cryptsetup's ``LUKS2_hdr_validate`` and its keyslot validators
enforce is checked here, in the same order: requirements, tokens, digests,
segments, keyslots, config, keyslot areas, JSON size, keyslot implementations.
Before refusing, cryptsetup drops KDF fields a keyslot's KDF type does not use
(its "repair" step); :func:`validate_json` does the same on its own copy.
All checks are linear or ``n log n`` in the number of objects.
"""

from __future__ import annotations

import copy
import json
from typing import Any

BIN_SIZE = 4096
HDR_SIZES = tuple(0x4000 << i for i in range(9))  # 16 KiB … 4 MiB
MAX_KEYSLOTS_SIZE = 128 << 20
MAX_U64 = (1 << 64) - 1
MAX_U32 = (1 << 32) - 1
_KDF_FIELDS = {"pbkdf2": {"type", "salt", "hash", "iterations"},
               "argon2i": {"type", "salt", "time", "memory", "cpus"},
               "argon2id": {"type", "salt", "time", "memory", "cpus"}}


class Invalid(Exception):
    """One header copy is invalid (becomes LuksFormatError)."""


def _digits(text: str) -> bool:
    return text.isascii() and text.isdigit()


def u64(value: Any, what: str) -> int:
    """A decimal-string 64-bit number (cryptsetup's ``numbered`` + ``strtoull``)."""
    if not isinstance(value, str) or not _digits(value):
        raise Invalid(f"{what} must be a decimal string")
    number = int(value)
    if number > MAX_U64:
        raise Invalid(f"{what} does not fit in 64 bits")
    return number


def _int(obj: dict[str, Any], key: str, what: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{what} is missing \"{key}\" (int)")
    return value


def _str(obj: dict[str, Any], key: str, what: str) -> str:
    """A non-empty string field (cryptsetup's ``json_contains_string``)."""
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise Invalid(f"{what} is missing \"{key}\" (non-empty string)")
    return value


def _obj(obj: dict[str, Any], key: str, what: str) -> dict[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise Invalid(f"{what} is missing \"{key}\" (object)")
    return value


def _arr(obj: dict[str, Any], key: str, what: str) -> list[Any]:
    value = obj.get(key)
    if not isinstance(value, list):
        raise Invalid(f"{what} is missing \"{key}\" (array)")
    return value


def _numbered(section: dict[str, Any], what: str) -> None:
    for key in section:
        if not _digits(key):
            raise Invalid(f"{what} \"{key}\" is not in numbered form")


def _refs(values: list[Any], section: dict[str, Any], what: str) -> None:
    for v in values:
        if not isinstance(v, str):
            raise Invalid(f"illegal value type in {what} array")
        if not isinstance(section.get(v), dict):
            raise Invalid(f"{what} array references a missing object {v!r}")


def _strings(values: list[Any], what: str) -> list[str]:
    if not all(isinstance(v, str) for v in values):
        raise Invalid(f"{what} must contain only strings")
    return values


def reencrypt_flag(flag: str) -> bool:
    """``online-reencrypt`` or ``online-reencrypt-v<digits>``."""
    return flag == "online-reencrypt" or (flag.startswith("online-reencrypt-v") and _digits(flag[18:]))


def is_backup(seg: dict[str, Any]) -> bool:
    """A reencryption backup segment (a flag starting with ``backup-``)."""
    flags = seg.get("flags")
    return isinstance(flags, list) and any(isinstance(f, str) and f.startswith("backup-") for f in flags)


def mandatory(doc: dict[str, Any]) -> list[str]:
    reqs = doc["config"].get("requirements", {})
    return list(reqs.get("mandatory", [])) if isinstance(reqs, dict) else []


def _requirements(config: dict[str, Any]) -> None:
    if "requirements" not in config:
        return
    reqs = _obj(config, "requirements", "config")
    if "mandatory" in reqs:
        flags = _strings(_arr(reqs, "mandatory", "requirements"), "requirements mandatory")
        if sum(reencrypt_flag(f) for f in flags) > 1:
            raise Invalid("multiple online reencryption requirement flags")


def _no_overlap(intervals: list[tuple[int, int | None, str]], what: str) -> None:
    """No two [offset, offset+length) intervals overlap (None = to the end); n log n."""
    end: float = -1
    prev = ""
    for offset, length, key in sorted(intervals, key=lambda i: i[0]):
        if offset < end:
            raise Invalid(f"{what} {prev} and {key} overlap")
        stop = float("inf") if length is None else offset + length
        if stop > end:
            end, prev = stop, key


def _segments(segments: dict[str, Any], digested: set[str]) -> None:
    _numbered(segments, "segment")
    if not segments:
        raise Invalid("empty segments section")
    first_backup = -1
    for key, seg in segments.items():
        what = f"segment {key}"
        if not isinstance(seg, dict):
            raise Invalid(f"{what} is not an object")
        stype = _str(seg, "type", what)
        offset = u64(_str(seg, "offset", what), f"{what} offset")
        size_s = _str(seg, "size", what)
        size = 0 if size_s == "dynamic" else u64(size_s, f"{what} size")
        if size_s != "dynamic" and not size:
            raise Invalid(f"{what} has an illegal size")
        if offset % 512 or size % 512:
            raise Invalid(f"{what} offset/size is not aligned to 512 bytes")
        if "flags" in seg:
            _strings(_arr(seg, "flags", what), f"{what} flags")
        index = int(key)
        if is_backup(seg):
            first_backup = index if first_backup < 0 else min(first_backup, index)
        elif 0 <= first_backup <= index:
            raise Invalid(f"regular {what} is behind backup segment {first_backup}")
        if stype == "crypt":
            _crypt_segment(seg, what, size, key in digested)
    count = len(segments)
    if first_backup == 0:
        raise Invalid("no regular segment")
    if first_backup >= count:
        raise Invalid(f"gap between the last regular segment and backup segment {first_backup}")
    regular = count if first_backup < 0 else first_backup
    for i in range(count):
        if str(i) not in segments:
            raise Invalid(f"gap at key {i} in the segments object")
    intervals: list[tuple[int, int | None, str]] = []
    for i in range(regular):
        seg = segments[str(i)]
        length = None if seg["size"] == "dynamic" else int(seg["size"])
        if length is None and i != regular - 1:
            raise Invalid("only the last regular segment may have a dynamic size")
        intervals.append((int(seg["offset"]), length, str(i)))
    _no_overlap(intervals, "segments")


def _crypt_segment(seg: dict[str, Any], what: str, size: int, has_digest: bool) -> None:
    iv = _str(seg, "iv_tweak", what)
    _str(seg, "encryption", what)
    sector = _int(seg, "sector_size", what)
    if "integrity" in seg:
        integ = _obj(seg, "integrity", what)
        for field in ("type", "journal_encryption", "journal_integrity"):
            _str(integ, field, f"{what} integrity")
    if not 0 <= sector <= MAX_U32:
        raise Invalid(f"{what} has an illegal sector_size")
    if not sector or sector % 512:
        raise Invalid(f"{what} has an illegal sector size {sector}")
    u64(iv, f"{what} iv_tweak")
    if size % sector:
        raise Invalid(f"{what} size is not aligned to its sector size")
    if not has_digest:
        raise Invalid(f"crypt {what} is not assigned to a key digest")


def _config(doc: dict[str, Any]) -> tuple[int, int]:
    config = doc["config"]
    json_size = u64(_str(config, "json_size", "config"), "config json_size")
    keyslots_size = u64(_str(config, "keyslots_size", "config"), "config keyslots_size")
    metadata_size = json_size + BIN_SIZE
    if metadata_size not in HDR_SIZES:
        raise Invalid(f"unsupported LUKS2 header size {metadata_size}")
    if keyslots_size % 4096 or keyslots_size > MAX_KEYSLOTS_SIZE:
        raise Invalid(f"unsupported LUKS2 keyslots size {keyslots_size}")
    offsets = [int(s["offset"]) for s in doc["segments"].values() if not is_backup(s)]
    first = 0 if not offsets or 0 in offsets else min(offsets)
    if first and (first < keyslots_size or first - keyslots_size < 2 * metadata_size):
        raise Invalid(f"keyslots area ({keyslots_size} bytes) overlaps the data at offset {first}")
    if "flags" in config:
        _strings(_arr(config, "flags", "config"), "config flags")
    return metadata_size, keyslots_size


def _areas(keyslots: dict[str, Any], metadata_size: int, keyslots_size: int) -> None:
    end = 2 * metadata_size + keyslots_size
    intervals: list[tuple[int, int | None, str]] = []
    for key, slot in keyslots.items():
        area = _obj(slot, "area", f"keyslot {key}")
        _str(area, "type", f"keyslot {key} area")
        off = u64(_str(area, "offset", f"keyslot {key}"), f"keyslot {key} area offset")
        length = u64(_str(area, "size", f"keyslot {key}"), f"keyslot {key} area size")
        if off < 2 * metadata_size:
            raise Invalid(f"keyslot {key} area offset {off} is inside the metadata")
        if not length:
            raise Invalid(f"keyslot {key} area has zero length")
        if off + length > end:
            raise Invalid(f"keyslot {key} area overflows the keyslots area")
        intervals.append((off, length, key))
    _no_overlap(intervals, "keyslot areas")


def _luks2_keyslot(slot: dict[str, Any], what: str) -> None:
    kdf = _obj(slot, "kdf", what)
    af = _obj(slot, "af", what)
    area = _obj(slot, "area", what)
    ktype = _str(kdf, "type", f"{what} kdf")
    if ktype == "pbkdf2":
        if len(kdf) != 4:
            raise Invalid(f"{what} pbkdf2 section has unexpected fields")
        _str(kdf, "hash", what)
        _int(kdf, "iterations", what)
        _str(kdf, "salt", what)
    elif ktype in ("argon2i", "argon2id"):
        if len(kdf) != 5:
            raise Invalid(f"{what} {ktype} section has unexpected fields")
        for f in ("time", "memory", "cpus"):
            _int(kdf, f, what)
        _str(kdf, "salt", what)
    if _str(af, "type", f"{what} af") != "luks1":
        raise Invalid(f"{what} has an unknown AF type")
    _str(af, "hash", f"{what} af")
    _int(af, "stripes", f"{what} af")
    if _str(area, "type", f"{what} area") != "raw":
        raise Invalid(f"{what} has an unknown area type")
    _str(area, "encryption", f"{what} area")
    _int(area, "key_size", f"{what} area")
    _str(area, "offset", f"{what} area")
    _str(area, "size", f"{what} area")


def _keyslot_implementations(doc: dict[str, Any], digest_count: dict[str, int]) -> None:
    reencrypt = 0
    for key, slot in doc["keyslots"].items():
        stype = slot.get("type")
        if stype == "luks2":
            _luks2_keyslot(slot, f"keyslot {key}")
            if digest_count.get(key, 0) != 1:
                raise Invalid(f"keyslot {key} is not assigned to exactly one digest")
        elif stype == "reencrypt":
            reencrypt += 1
    flags = [f for f in mandatory(doc) if isinstance(f, str)]
    if any(reencrypt_flag(f) for f in flags) and not reencrypt:
        raise Invalid("missing reencryption keyslot")
    if reencrypt and not any(reencrypt_flag(f) for f in flags):
        raise Invalid("reencryption keyslot without the reencryption requirement")
    if reencrypt > 1:
        raise Invalid("too many reencryption keyslots")


def _repair(doc: dict[str, Any]) -> dict[str, Any]:
    """cryptsetup's load-time repair: drop KDF fields the keyslot's KDF type does not use."""
    fixed = copy.deepcopy(doc)
    keyslots = fixed.get("keyslots")
    if not isinstance(keyslots, dict):
        return fixed
    for slot in keyslots.values():
        kdf = slot.get("kdf") if isinstance(slot, dict) else None
        if isinstance(kdf, dict) and isinstance(kdf.get("type"), str) and kdf["type"] in _KDF_FIELDS:
            for name in [k for k in kdf if k not in _KDF_FIELDS[kdf["type"]]]:
                del kdf[name]
    return fixed


def validate_area(json_area: bytes) -> Any:
    """Parse a JSON area: starts with ``{``, NUL-terminated inside the area, only NULs after."""
    if not json_area.startswith(b"{"):
        raise Invalid("JSON area does not start with '{'")
    end = json_area.find(b"\0")
    if end < 0:
        raise Invalid("JSON area has no terminating NUL byte")
    if json_area.count(0, end) != len(json_area) - end:
        raise Invalid("non-NUL bytes after the JSON data")
    try:
        return json.loads(json_area[:end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise Invalid(f"JSON metadata is not valid: {exc.__class__.__name__}") from None


def validate_json(doc: Any, json_area_size: int) -> dict[str, Any]:
    """Validate a LUKS2 JSON document; return it as cryptsetup would use it (after its repair step)."""
    if not isinstance(doc, dict):
        raise Invalid("LUKS2 metadata is not a JSON object")
    try:
        _validate(doc, json_area_size)
        return doc
    except Invalid:
        fixed = _repair(doc)
        _validate(fixed, json_area_size)
        return fixed


def _validate(doc: dict[str, Any], json_area_size: int) -> None:
    for name in ("config", "tokens", "digests", "keyslots", "segments"):
        if not isinstance(doc.get(name), dict):
            raise Invalid(f"missing {name} section")
    keyslots: dict[str, Any] = doc["keyslots"]
    segments: dict[str, Any] = doc["segments"]
    _requirements(doc["config"])
    _numbered(doc["tokens"], "token")
    for key, tok in doc["tokens"].items():
        if not isinstance(tok, dict):
            raise Invalid(f"token {key} is not an object")
        _str(tok, "type", f"token {key}")
        _refs(_arr(tok, "keyslots", f"token {key}"), keyslots, "keyslots")
    _numbered(doc["digests"], "digest")
    digested: set[str] = set()
    digest_count: dict[str, int] = {}
    for key, dig in doc["digests"].items():
        if not isinstance(dig, dict):
            raise Invalid(f"digest {key} is not an object")
        _str(dig, "type", f"digest {key}")
        slots = _arr(dig, "keyslots", f"digest {key}")
        segs = _arr(dig, "segments", f"digest {key}")
        _refs(slots, keyslots, "keyslots")
        _refs(segs, segments, "segments")
        digested.update(segs)
        for s in set(slots):
            digest_count[s] = digest_count.get(s, 0) + 1
    _segments(segments, digested)
    _numbered(keyslots, "keyslot")
    for key, slot in keyslots.items():
        if not isinstance(slot, dict):
            raise Invalid(f"keyslot {key} is not an object")
        _str(slot, "type", f"keyslot {key}")
        if not 0 <= _int(slot, "key_size", f"keyslot {key}") <= MAX_U32:
            raise Invalid(f"keyslot {key} has an illegal key_size")
    metadata_size, keyslots_size = _config(doc)
    _areas(keyslots, metadata_size, keyslots_size)
    if u64(doc["config"]["json_size"], "json_size") != json_area_size:
        raise Invalid("JSON area size does not match the binary header")
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) > json_area_size:
        raise Invalid("JSON does not fit in its area")
    _keyslot_implementations(doc, digest_count)
