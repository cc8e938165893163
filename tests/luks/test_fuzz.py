"""Property-based fuzzing: the parsers raise nothing but the engine's own errors."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotluks.errors import LuksError
from hotluks.luks import luks2
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.volume import open_header

HDR = 0x4000
SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                             HealthCheck.too_slow])


def _parse_and_unlock(blob: bytes) -> None:
    try:
        hdr = open_header(blob)
    except LuksError:
        return
    try:
        unlock_header(hdr, b"fuzz")
    except LuksError:
        pass


mutations = st.lists(st.tuples(st.integers(0, 4095), st.integers(0, 255)), min_size=1, max_size=8)


@SETTINGS
@given(mutations)
def test_luks1_byte_mutations(luks1_blob: bytes, changes: list[tuple[int, int]]) -> None:
    blob = bytearray(luks1_blob)
    for offset, value in changes:
        blob[offset % 600] = value
    _parse_and_unlock(bytes(blob))


@SETTINGS
@given(st.binary(min_size=0, max_size=2048), st.sampled_from([b"LUKS\xba\xbe\x00\x01", b"LUKS\xba\xbe\x00\x02",
                                                               b"SKUL\xba\xbe\x00\x02", b""]))
def test_random_bytes_behind_a_signature(data: bytes, prefix: bytes) -> None:
    _parse_and_unlock(prefix + data)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=False),
                      st.text(alphabet="0123456789abdynmic-", max_size=12))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet="0123456789abc", max_size=3), inner, max_size=4)),
    max_leaves=20)


def _doc(blob: bytes) -> dict[str, Any]:
    return dict(json.loads(blob[4096:HDR].split(b"\0", 1)[0]))


@SETTINGS
@given(st.sampled_from(["keyslots", "tokens", "segments", "digests", "config"]),
       st.sampled_from(["0", "1", "json_size", "keyslots_size", "flags", "requirements", "x"]), json_values)
def test_luks2_json_mutations(luks2_blob: bytes, section: str, key: str, value: Any) -> None:
    doc = _doc(luks2_blob)
    doc[section][key] = value
    try:
        headers = luks2.pack(doc, hdr_size=HDR, seqid=2, uuid="u")
    except LuksError:
        return
    _parse_and_unlock(headers + luks2_blob[len(headers):3 * HDR])


@SETTINGS
@given(st.sampled_from([("keyslots", "0"), ("segments", "0"), ("digests", "0")]),
       st.sampled_from(["type", "offset", "size", "key_size", "area", "kdf", "af", "keyslots", "segments",
                        "sector_size", "iv_tweak", "encryption", "salt", "digest", "iterations", "hash"]),
       json_values)
def test_luks2_field_mutations(luks2_blob: bytes, where: tuple[str, str], field: str, value: Any) -> None:
    doc = _doc(luks2_blob)
    doc[where[0]][where[1]][field] = value
    try:
        headers = luks2.pack(doc, hdr_size=HDR, seqid=2, uuid="u")
    except LuksError:
        return
    _parse_and_unlock(headers + luks2_blob[len(headers):3 * HDR])


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, HDR - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_luks2_binary_mutations_without_checksum_fix(luks2_blob: bytes, changes: list[tuple[int, int]]) -> None:
    blob = bytearray(luks2_blob[:3 * HDR])
    for offset, value in changes:
        blob[offset] = value
    _parse_and_unlock(bytes(blob))
