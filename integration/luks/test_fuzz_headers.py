"""Hypothesis fuzzing of LUKS1/LUKS2 headers at CI scale: more than 20 000 cases, nothing but the engine's own
errors (no crash, no other exception type). The unit suite runs the same properties briefly (tests/luks)."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hotluks.errors import LuksError
from hotluks.luks import create, luks2
from hotluks.luks.kdf import KdfParams
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.volume import open_header

pytestmark = pytest.mark.slow
HDR = 0x4000
PASS = b"fuzz pass"
PER_PROPERTY = int(os.environ.get("HOTLUKS_FUZZ_EXAMPLES", "3500"))
TOTAL_GOAL = 20000
CASES = {"count": 0}
SETTINGS = settings(max_examples=PER_PROPERTY, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))
LUKS1 = create.build_luks1(os.urandom(32), PASS, cipher="aes-xts-plain64", hash_name="sha256", kdf_iterations=1000,
                           digest_iterations=1000, uuid="u", detached=True, rand=os.urandom).blob
LUKS2 = create.build_luks2(os.urandom(32), PASS, cipher="aes-xts-plain64",
                           kdf=KdfParams("pbkdf2", os.urandom(32), iterations=1000), digest_hash="sha256",
                           digest_iterations=1000, uuid="u", detached=True, sector_size=512, rand=os.urandom).blob
LUKS2_SHORT = LUKS2[:3 * HDR] + LUKS2[2 * HDR:2 * HDR + 256 * 512]  # headers + keyslot 0's material


def _cheap(hdr: Any) -> bool:
    """Unlock only where the KDF is cheap: hostile KDF cost is bounded by preflight's killable worker
    (tests/luks/test_preflight.py), not by this crash hunt."""
    return all(k.kdf.iterations <= 20000 and k.kdf.time * max(k.kdf.memory, 1) <= 1 << 16 for k in hdr.keyslots) \
        and all(d.iterations <= 20000 for d in hdr.digests)


def _parse_and_unlock(blob: bytes) -> None:
    CASES["count"] += 1
    try:
        hdr = open_header(blob)
    except LuksError:
        return
    if not _cheap(hdr):
        return
    try:
        unlock_header(hdr, PASS)
    except LuksError:
        pass


def _doc() -> dict[str, Any]:
    return dict(json.loads(LUKS2[4096:HDR].split(b"\0", 1)[0]))


def _repacked(doc: dict[str, Any]) -> bytes | None:
    try:
        headers = luks2.pack(doc, hdr_size=HDR, seqid=2, uuid="u")
    except (LuksError, ValueError, TypeError):
        return None
    return headers + LUKS2_SHORT[len(headers):]


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 1023), st.integers(0, 255)), min_size=1, max_size=8))
def test_luks1_phdr_mutations(changes: list[tuple[int, int]]) -> None:
    blob = bytearray(LUKS1)
    for offset, value in changes:
        blob[offset % 592] = value
    _parse_and_unlock(bytes(blob))


@SETTINGS
@given(st.binary(max_size=4096), st.sampled_from([b"LUKS\xba\xbe\x00\x01", b"LUKS\xba\xbe\x00\x02",
                                                  b"SKUL\xba\xbe\x00\x02", b""]))
def test_random_bytes_behind_a_signature(data: bytes, prefix: bytes) -> None:
    _parse_and_unlock(prefix + data)


json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.floats(allow_nan=False),
                      st.text(alphabet="0123456789abdynmic-:", max_size=12), st.text(max_size=6))
json_values = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(alphabet="0123456789abc", max_size=3), inner, max_size=4)),
    max_leaves=20)


@SETTINGS
@given(st.sampled_from(["keyslots", "tokens", "segments", "digests", "config"]),
       st.sampled_from(["0", "1", "31", "32", "json_size", "keyslots_size", "flags", "requirements", "x", ""]),
       json_values)
def test_luks2_section_mutations(section: str, key: str, value: Any) -> None:
    doc = _doc()
    doc[section][key] = value
    blob = _repacked(doc)
    if blob is not None:
        _parse_and_unlock(blob)


@SETTINGS
@given(st.sampled_from([("keyslots", "0"), ("segments", "0"), ("digests", "0")]),
       st.sampled_from(["type", "offset", "size", "key_size", "area", "kdf", "af", "keyslots", "segments",
                        "sector_size", "iv_tweak", "encryption", "salt", "digest", "iterations", "hash",
                        "priority", "flags", "integrity"]),
       json_values)
def test_luks2_field_mutations(where: tuple[str, str], field: str, value: Any) -> None:
    doc = _doc()
    doc[where[0]][where[1]][field] = value
    blob = _repacked(doc)
    if blob is not None:
        _parse_and_unlock(blob)


@SETTINGS
@given(st.sampled_from(["kdf", "af", "area"]),
       st.sampled_from(["type", "hash", "iterations", "salt", "time", "memory", "cpus", "stripes", "offset",
                        "size", "encryption", "key_size"]),
       st.one_of(st.integers(-5, 2 ** 33), st.text(alphabet="0123456789abcdefghijklmnopqrstuvwxyz-:+/=",
                                                   max_size=16)))
def test_luks2_keyslot_parameter_mutations(part: str, field: str, value: Any) -> None:
    doc = _doc()
    doc["keyslots"]["0"][part][field] = value
    blob = _repacked(doc)
    if blob is not None:
        _parse_and_unlock(blob)


@SETTINGS
@given(st.lists(st.tuples(st.integers(0, 3 * HDR - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_luks2_raw_byte_mutations(changes: list[tuple[int, int]]) -> None:
    blob = bytearray(LUKS2_SHORT)
    for offset, value in changes:
        blob[offset] = value
    _parse_and_unlock(bytes(blob))


def test_the_run_reached_the_ci_goal() -> None:
    """Runs last in this module: the properties above together tried at least 20 000 headers."""
    if CASES["count"] == 0:
        pytest.skip("run together with the fuzz properties of this module")
    assert CASES["count"] >= TOTAL_GOAL, CASES
