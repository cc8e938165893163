"""Hostile headers: the engine gives the same accept/reject verdict as ``cryptsetup luksDump``.

Fixtures are real cryptsetup headers, mutated at byte level (LUKS1) or in their JSON with
valid checksums rewritten (LUKS2), so the checks below the checksum are exercised.
"""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotluks.errors import LuksError
from hotluks.luks import luks2
from hotluks.luks.volume import open_header
from testsupport.luks_mutations import set_at

pytestmark = pytest.mark.cryptsetup

FAST = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


def _engine_accepts(path: Path) -> bool:
    try:
        open_header(path)
    except LuksError:
        return False
    return True


def _cryptsetup_accepts(cryptsetup: Any, path: Path) -> bool:
    return int(cryptsetup("luksDump", str(path), check=False).returncode) == 0


# ---- LUKS1: byte-level mutations -------------------------------------------------------

def _slot(index: int, field: int, value: int) -> Callable[[bytearray], None]:
    def apply(b: bytearray) -> None:
        off = 208 + index * 48 + field
        b[off:off + 4] = struct.pack(">I", value)
    return apply


def _set_bytes(offset: int, value: bytes) -> Callable[[bytearray], None]:
    def apply(b: bytearray) -> None:
        b[offset:offset + len(value)] = value
    return apply


def _slot_offset_of(index: int, delta_from: int, delta: int) -> Callable[[bytearray], None]:
    def apply(b: bytearray) -> None:
        base = struct.unpack_from(">I", b, 208 + delta_from * 48 + 40)[0]
        b[208 + index * 48 + 40:208 + index * 48 + 44] = struct.pack(">I", base + delta)
    return apply


def _truncate(size: int) -> Callable[[bytearray], None]:
    def apply(b: bytearray) -> None:
        del b[size:]
    return apply


LUKS1_MUTATIONS: dict[str, Callable[[bytearray], None]] = {
    "unchanged": lambda b: None,
    "bad-magic": _set_bytes(0, b"LUKS\xba\xbf"),
    "version-3": _set_bytes(6, b"\x00\x03"),
    "keyslots-overlap": _slot_offset_of(1, 0, 8),
    "keyslot-in-header": _slot(2, 40, 0),
    "keyslot-over-payload": _slot(7, 40, 4090),
    "payload-inside-keyslots": _set_bytes(104, struct.pack(">I", 1000)),
    "payload-zero-detached": _set_bytes(104, struct.pack(">I", 0)),
    "stripes-3999": _slot(5, 44, 3999),
    "stripes-inactive-slot-zero": _slot(6, 44, 0),
    "key-bytes-zero": _set_bytes(108, struct.pack(">I", 0)),
    "key-bytes-huge": _set_bytes(108, struct.pack(">I", 4096)),
    "hash-unknown": _set_bytes(72, b"nohash".ljust(32, b"\0")),
    "hash-uppercase": _set_bytes(72, b"SHA256".ljust(32, b"\0")),
    "cipher-serpent": _set_bytes(8, b"serpent".ljust(32, b"\0")),
    "slot-state-garbage": _slot(3, 0, 0x12345678),
    "mk-digest-zeroed": _set_bytes(112, bytes(20)),
    "truncated-500": _truncate(500),
    "truncated-1M": _truncate(1 << 20),
}


@pytest.fixture(scope="module")
def luks1_source(tmp_path_factory: pytest.TempPathFactory, cryptsetup: Any) -> bytes:
    root = tmp_path_factory.mktemp("luks1src")
    key = root / "key"
    key.write_bytes(b"hostile")
    device = root / "disk.img"
    device.write_bytes(bytes(4 << 20))
    cryptsetup("luksFormat", "--type", "luks1", *FAST, "--key-file", str(key), str(device))
    return device.read_bytes()


@pytest.mark.parametrize("name", list(LUKS1_MUTATIONS), ids=list(LUKS1_MUTATIONS))
def test_luks1_verdicts_match_cryptsetup(cryptsetup: Any, tmp_path: Path, luks1_source: bytes, name: str) -> None:
    blob = bytearray(luks1_source)
    LUKS1_MUTATIONS[name](blob)
    path = tmp_path / "mutated.img"
    path.write_bytes(bytes(blob))
    assert _engine_accepts(path) == _cryptsetup_accepts(cryptsetup, path)


# ---- LUKS2: JSON mutations with valid checksums, and binary damage ---------------------

HDR = 0x4000


def _read_doc(blob: bytes) -> dict[str, Any]:
    return dict(json.loads(blob[4096:HDR].split(b"\0", 1)[0]))


def _rewrite(blob: bytearray, doc: dict[str, Any], copies: str = "both") -> None:
    seqid = struct.unpack_from(">Q", blob, 16)[0] + 1
    text = json.dumps(doc, separators=(",", ":")).encode()
    area = text + bytes(HDR - 4096 - len(text))
    for offset in ((0, HDR) if copies == "both" else (0,)):
        head = bytearray(blob[offset:offset + 4096])
        head[16:24] = struct.pack(">Q", seqid)
        whole = bytes(head) + area
        csum = luks2.checksum("sha256", whole)
        head[luks2.CSUM_OFFSET:luks2.CSUM_OFFSET + 64] = csum + bytes(64 - len(csum))
        blob[offset:offset + HDR] = bytes(head) + area


def _json(change: Callable[[dict[str, Any]], None], copies: str = "both") -> Callable[[bytearray], None]:
    def apply(b: bytearray) -> None:
        doc = _read_doc(bytes(b))
        change(doc)
        _rewrite(b, doc, copies)
    return apply


_put = set_at


def _clone_keyslot(offset: str) -> Callable[[dict[str, Any]], None]:
    def change(doc: dict[str, Any]) -> None:
        slot = copy.deepcopy(doc["keyslots"]["0"])
        slot["area"]["offset"] = offset
        doc["keyslots"]["1"] = slot
        doc["digests"]["0"]["keyslots"].append("1")
    return change


def _broken_json(b: bytearray) -> None:
    doc_text = json.dumps(_read_doc(bytes(b)), separators=(",", ":")).encode()[:-3]
    area = doc_text + bytes(HDR - 4096 - len(doc_text))
    for offset in (0, HDR):
        head = bytearray(b[offset:offset + 4096])
        csum = luks2.checksum("sha256", bytes(head) + area)
        head[luks2.CSUM_OFFSET:luks2.CSUM_OFFSET + 64] = csum + bytes(64 - len(csum))
        b[offset:offset + HDR] = bytes(head) + area


def _flip(offset: int) -> Callable[[bytearray], None]:
    def apply(b: bytearray) -> None:
        b[offset] ^= 0x40
    return apply


LUKS2_MUTATIONS: dict[str, Callable[[bytearray], None]] = {
    "unchanged": lambda b: None,
    "primary-checksum-damaged": _flip(5000),
    "both-checksums-damaged": lambda b: (_flip(5000)(b), _flip(HDR + 5000)(b)) and None,
    "primary-json-damaged-only": _json(_put("config", KeyError), copies="primary"),
    "broken-json": _broken_json,
    "keyslots-overlap": _json(_clone_keyslot("32768")),
    "keyslot-separate-area": _json(_clone_keyslot("294912")),
    "keyslot-in-metadata": _json(_put("keyslots/0/area/offset", "4096")),
    "keyslot-past-keyslots-area": _json(_put("keyslots/0/area/offset", "16773120")),
    "segment-inside-metadata": _json(_put("segments/0/offset", "8192")),
    "segment-offset-number": _json(_put("segments/0/offset", 16777216)),
    "area-size-number": _json(_put("keyslots/0/area/size", 258048)),
    "key-size-string": _json(_put("keyslots/0/key_size", "64")),
    "sector-size-string": _json(_put("segments/0/sector_size", "512")),
    "sector-size-1000": _json(_put("segments/0/sector_size", 1000)),
    "segment-type-number": _json(_put("segments/0/type", 1)),
    "missing-digests": _json(_put("digests", KeyError)),
    "digest-without-segments": _json(_put("digests/0/segments", [])),
    "json-size-wrong": _json(_put("config/json_size", "16384")),
    "keyslots-size-huge": _json(_put("config/keyslots_size", str(64 << 20))),
    "keyslots-size-unaligned": _json(_put("config/keyslots_size", "16744447")),
    "unknown-requirement": _json(_put("config/requirements", {"mandatory": ["future-thing"]})),
    "legacy-argon2-kdf": _json(_put("keyslots/0/kdf", {"type": "argon2", "time": 4, "memory": 32, "cpus": 1,
                                                       "salt": "c2FsdA=="})),
    "pbkdf2-extra-field": _json(_put("keyslots/0/kdf/memory", 32)),
    "af-type-unknown": _json(_put("keyslots/0/af/type", "luks9")),
    "keyslot-name-not-numbered": _json(_put("keyslots/x", {"type": "luks2", "key_size": 64})),
    "token-references-missing-keyslot": _json(_put("tokens/0", {"type": "t", "keyslots": ["9"]})),
    "hdr-size-field-wrong": _set_bytes(8, struct.pack(">Q", 0x5000)),
    "truncated-to-primary": _truncate(HDR + 100),
    "truncated-1k": _truncate(1024),
}


@pytest.fixture(scope="module")
def luks2_source(tmp_path_factory: pytest.TempPathFactory, cryptsetup: Any) -> bytes:
    root = tmp_path_factory.mktemp("luks2src")
    key = root / "key"
    key.write_bytes(b"hostile")
    device = root / "disk.img"
    device.write_bytes(bytes(20 << 20))
    cryptsetup("luksFormat", "--type", "luks2", *FAST, "--key-file", str(key), str(device))
    return device.read_bytes()


@pytest.mark.parametrize("name", list(LUKS2_MUTATIONS), ids=list(LUKS2_MUTATIONS))
def test_luks2_verdicts_match_cryptsetup(cryptsetup: Any, tmp_path: Path, luks2_source: bytes, name: str) -> None:
    blob = bytearray(luks2_source)
    LUKS2_MUTATIONS[name](blob)
    path = tmp_path / "mutated.img"
    path.write_bytes(bytes(blob))
    assert _engine_accepts(path) == _cryptsetup_accepts(cryptsetup, path)
