"""Header parsing and validation (pure): LUKS1 fields and overlaps, LUKS2 copies and JSON rules."""

from __future__ import annotations

import copy
import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from hotluks.errors import LuksFormatError, LuksUnsupportedError, ReadOnlyHeaderError, WrongPassphraseError
from hotluks.luks import create, luks1, luks2
from hotluks.luks.kdf import KdfParams
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.volume import open_header
from testsupport.luks_mutations import set_at

HDR = 0x4000


def _doc(blob: bytes, copy_offset: int = 0) -> dict[str, Any]:
    area = blob[copy_offset + 4096:copy_offset + HDR]
    return dict(json.loads(area.split(b"\0", 1)[0]))


def _repack(blob: bytes, doc: dict[str, Any], seqid: int = 1) -> bytes:
    headers = luks2.pack(doc, hdr_size=HDR, seqid=seqid, uuid="11111111-2222-3333-4444-555555555555")
    return headers + blob[len(headers):]


def test_luks1_fields(luks1_blob: bytes, passphrase: bytes) -> None:
    hdr = open_header(luks1_blob)
    assert (hdr.version, hdr.cipher, hdr.key_bytes, hdr.hash) == (1, "aes-xts-plain64", 64, "sha256")
    assert hdr.payload_offset == 4096 * 512 and not hdr.detached
    assert [k.index for k in hdr.keyslots] == [0]
    assert unlock_header(hdr, passphrase).keyslot == 0
    with pytest.raises(WrongPassphraseError):
        unlock_header(hdr, b"nope")


def _patch_slot(blob: bytes, index: int, **changes: int) -> bytes:
    slot = luks1.raw_slots(blob)[index]
    new = luks1.RawSlot(changes.get("active", slot.active), slot.iterations, slot.salt,
                        changes.get("offset", slot.offset), changes.get("stripes", slot.stripes))
    return luks1.replace_slot(blob[:luks1.PHDR_SIZE], index, new) + blob[luks1.PHDR_SIZE:]


@pytest.mark.parametrize("mutate,message", [
    (lambda b: _patch_slot(b, 1, offset=luks1.raw_slots(b)[0].offset + 10), "overlaps keyslot"),
    (lambda b: _patch_slot(b, 7, offset=4000), "data"),
    (lambda b: _patch_slot(b, 3, stripes=3999), "stripes"),
    (lambda b: _patch_slot(b, 0, offset=1), "header"),
    (lambda b: b[:104] + struct.pack(">I", 1000) + b[108:], "data"),
    (lambda b: b[:6] + b"\0\x03" + b[8:], "version"),
    (lambda b: b[:108] + struct.pack(">I", 0) + b[112:], "key"),
    (lambda b: b[:1 << 20], "too small"),
    (lambda b: b"XUKS" + b[4:], "not a LUKS"),
])
def test_luks1_rejections(luks1_blob: bytes, mutate: Callable[[bytes], bytes], message: str) -> None:
    with pytest.raises(LuksFormatError, match=message):
        open_header(mutate(luks1_blob))


def test_luks1_unknown_hash_is_unsupported(luks1_blob: bytes) -> None:
    blob = luks1_blob[:72] + b"md5".ljust(32, b"\0") + luks1_blob[104:]
    with pytest.raises(LuksUnsupportedError, match="md5"):
        open_header(blob)


def test_luks1_detached_header_has_payload_offset_zero(passphrase: bytes) -> None:
    import os

    meta = create.build_luks1(os.urandom(32), passphrase, cipher="aes-cbc-essiv:sha256", hash_name="sha1",
                              kdf_iterations=1000, digest_iterations=1000, uuid="u", detached=True, rand=os.urandom)
    hdr = open_header(meta.blob)
    assert hdr.detached and hdr.payload_offset == 0 and meta.payload_offset == 0
    assert unlock_header(hdr, passphrase).key


def test_luks2_fields(luks2_blob: bytes, passphrase: bytes) -> None:
    hdr = open_header(luks2_blob)
    assert (hdr.version, hdr.cipher, hdr.sector_size, hdr.seqid) == (2, "aes-xts-plain64", 4096, 1)
    assert hdr.payload_offset == 16 << 20 and hdr.metadata_size == 16 << 20
    assert unlock_header(hdr, passphrase).key


def test_luks2_damaged_primary_falls_back_to_secondary(luks2_blob: bytes, passphrase: bytes) -> None:
    damaged = luks2_blob[:5000] + b"\xff" + luks2_blob[5001:]
    hdr = open_header(damaged)
    assert any("primary" in w for w in hdr.warnings)
    assert unlock_header(hdr, passphrase).key
    both = damaged[:HDR + 5000] + b"\xff" + damaged[HDR + 5001:]
    with pytest.raises(LuksFormatError, match="checksum"):
        open_header(both)


def test_luks2_higher_seqid_wins(luks2_blob: bytes) -> None:
    doc = _doc(luks2_blob)
    doc["config"]["flags"] = ["allow-discards"]
    newer = luks2.pack(doc, hdr_size=HDR, seqid=7, uuid="11111111-2222-3333-4444-555555555555")
    mixed = luks2_blob[:HDR] + newer[HDR:] + luks2_blob[2 * HDR:]
    hdr = open_header(mixed)
    assert hdr.seqid == 7 and hdr.flags == ("allow-discards",)


_set = set_at


def _second_keyslot(offset: str) -> Callable[[dict[str, Any]], None]:
    def apply(doc: dict[str, Any]) -> None:
        slot = copy.deepcopy(doc["keyslots"]["0"])
        slot["area"]["offset"] = offset
        doc["keyslots"]["1"] = slot
    return apply


REJECTED = {
    "keyslot-areas-overlap": _second_keyslot("32768"),
    "keyslot-area-partly-overlaps": _second_keyslot("36864"),
    "keyslot-area-in-metadata": _set("keyslots/0/area/offset", "16384"),
    "keyslot-area-beyond-keyslots": _set("keyslots/0/area/offset", str(16 << 20)),
    "keyslot-area-zero": _set("keyslots/0/area/size", "0"),
    "offset-as-number": _set("keyslots/0/area/offset", 32768),
    "segment-offset-as-number": _set("segments/0/offset", 16777216),
    "segment-inside-metadata": _set("segments/0/offset", "16384"),
    "segment-unaligned": _set("segments/0/offset", "16777217"),
    "segment-size-zero": _set("segments/0/size", "0"),
    "segment-size-not-sector-aligned": _set("segments/0/size", "1536"),
    "sector-size-unaligned": _set("segments/0/sector_size", 1000),
    "iv-tweak-not-decimal": _set("segments/0/iv_tweak", "0x10"),
    "segment-without-digest": _set("digests/0/segments", []),
    "digest-missing-keyslot": _set("digests/0/keyslots", ["0", "5"]),
    "keyslot-key-not-numbered": _set("keyslots/a", {"type": "luks2", "key_size": 64}),
    "keyslot-key-size-string": _set("keyslots/0/key_size", "64"),
    "missing-tokens": _set("tokens", KeyError),
    "missing-config": _set("config", KeyError),
    "json-size-mismatch": _set("config/json_size", "28672"),
    "keyslots-size-unaligned": _set("config/keyslots_size", "16744447"),
    "keyslots-size-into-data": _set("config/keyslots_size", str(16 << 20)),
    "af-unknown": _set("keyslots/0/af/type", "luks2"),
    "area-unknown": _set("keyslots/0/area/type", "datashift"),
    "token-bad-keyslot": _set("tokens/0", {"type": "x", "keyslots": ["3"]}),
    "flags-not-strings": _set("config/flags", [1]),
    "requirements-not-object": _set("config/requirements", []),
    "empty-segment-encryption": _set("segments/0/encryption", ""),
    "keyslot-without-digest": _set("digests/0/keyslots", []),
    "keyslot-in-two-digests": _set("digests/1", {"type": "pbkdf2", "keyslots": ["0"], "segments": [],
                                                 "hash": "sha256", "iterations": 1000, "salt": "AAAA",
                                                 "digest": "AAAA"}),
    "segment-key-gap": lambda doc: doc["segments"].update({"1": doc["segments"].pop("0")}),
    "dynamic-segment-not-last": _set("segments/1", {"type": "linear", "offset": "999997440", "size": "512"}),
    "backup-segment-first": _set("segments/0/flags", ["backup-final"]),
    "two-reencrypt-flags": _set("config/requirements", {"mandatory": ["online-reencrypt-v2",
                                                                      "online-reencrypt-v3"]}),
    "reencrypt-keyslot-without-flag": _set("keyslots/1", {"type": "reencrypt", "key_size": 1,
                                                          "area": {"type": "none", "offset": "24576000",
                                                                   "size": "4096"}}),
    "pbkdf2-missing-iterations": _set("keyslots/0/kdf/iterations", KeyError),
    "argon2-fields-missing": _set("keyslots/0/kdf", {"type": "argon2id", "time": 4, "salt": "AAAA"}),
    "area-missing-key-size": _set("keyslots/0/area/key_size", KeyError),
}


@pytest.mark.parametrize("mutation", list(REJECTED), ids=list(REJECTED))
def test_luks2_json_rejections(luks2_blob: bytes, mutation: str) -> None:
    doc = _doc(luks2_blob)
    REJECTED[mutation](doc)
    with pytest.raises(LuksFormatError):
        open_header(_repack(luks2_blob, doc))


ACCEPTED = {
    "legacy-argon2-name": _set("keyslots/0/kdf", {"type": "argon2", "time": 4, "memory": 32, "cpus": 1,
                                                  "salt": "AAAA"}),
    "unknown-keyslot-type": _set("keyslots/0/type", "reencrypt-future"),
    "detached-segment": _set("segments/0/offset", "0"),
    "fixed-size-segment": _set("segments/0/size", "1048576"),
    "token": _set("tokens/0", {"type": "systemd-tpm2", "keyslots": ["0"], "extra": 1}),
    "flags": _set("config/flags", ["allow-discards", "no-journal"]),
    "pbkdf2-extra-field": _set("keyslots/0/kdf/time", 4),
    "priority-out-of-range": _set("keyslots/0/priority", 3),  # cryptsetup never tries it, does not refuse it
    "priority-not-int": _set("keyslots/0/priority", "x"),
}


@pytest.mark.parametrize("mutation", list(ACCEPTED), ids=list(ACCEPTED))
def test_luks2_json_acceptances(luks2_blob: bytes, mutation: str) -> None:
    doc = _doc(luks2_blob)
    ACCEPTED[mutation](doc)
    open_header(_repack(luks2_blob, doc))


def test_unknown_requirements_make_the_header_read_only(luks2_blob: bytes, passphrase: bytes) -> None:
    doc = _doc(luks2_blob)
    doc["config"]["requirements"] = {"mandatory": ["future-feature"]}
    hdr = open_header(_repack(luks2_blob, doc))
    assert hdr.read_only and hdr.requirements == ("future-feature",)
    vk = unlock_header(hdr, passphrase)
    kdf = KdfParams("pbkdf2", b"s" * 32, hash="sha256", iterations=1000)
    with pytest.raises(ReadOnlyHeaderError):
        create.add_keyslot(hdr, vk.key, b"new", kdf, lambda n: bytes(n))
    with pytest.raises(ReadOnlyHeaderError):
        create.remove_keyslot(hdr, 0, lambda n: bytes(n))


def test_unsupported_keyslot_is_a_typed_error(luks2_blob: bytes, passphrase: bytes) -> None:
    doc = _doc(luks2_blob)
    doc["keyslots"]["0"]["kdf"] = {"type": "scrypt", "salt": "AAAA"}
    hdr = open_header(_repack(luks2_blob, doc))
    with pytest.raises(LuksUnsupportedError):
        unlock_header(hdr, passphrase)


def test_luks2_truncated_keyslots_area(luks2_blob: bytes, passphrase: bytes) -> None:
    hdr = open_header(luks2_blob[:3 * HDR])
    with pytest.raises(LuksFormatError, match="beyond the end"):
        unlock_header(hdr, passphrase)
    with pytest.raises(LuksFormatError):
        open_header(luks2_blob[:HDR - 1])


def test_read_only_header_file_refuses_changes_and_activation(luks2_blob: bytes, passphrase: bytes,
                                                              tmp_path: Any) -> None:
    import io

    from hotluks.luks import add_key, decrypt_payload, encrypt_payload, remove_key, unlock

    doc = _doc(luks2_blob)
    doc["config"]["requirements"] = {"mandatory": ["future-feature"]}
    path = tmp_path / "ro.img"
    path.write_bytes(_repack(luks2_blob, doc) + bytes(1 << 20))
    before = path.read_bytes()
    assert unlock(path, passphrase).keyslot == 0
    with pytest.raises(ReadOnlyHeaderError):
        add_key(path, passphrase, b"other")
    with pytest.raises(ReadOnlyHeaderError):
        remove_key(path, passphrase)
    with pytest.raises(ReadOnlyHeaderError):
        decrypt_payload(path, io.BytesIO(), passphrase)
    with pytest.raises(ReadOnlyHeaderError):
        encrypt_payload(io.BytesIO(bytes(4096)), path, passphrase)
    assert path.read_bytes() == before


@pytest.mark.parametrize("cipher", ["capi:xts(ecb(aes-generic))-plain64", "camellia-xts-plain64", "aes-xts-benbi"])
def test_unsupported_segment_cipher_fails_payload_crypto_cleanly(luks2_blob: bytes, passphrase: bytes,
                                                                 tmp_path: Any, cipher: str) -> None:
    import io

    from hotluks.luks import decrypt_payload, encrypt_payload, unlock

    doc = _doc(luks2_blob)
    doc["segments"]["0"]["encryption"] = cipher
    path = tmp_path / "odd.img"
    path.write_bytes(_repack(luks2_blob, doc) + bytes(1 << 20))
    hdr = open_header(path)
    assert hdr.cipher == cipher
    vk = unlock(hdr, passphrase)
    with pytest.raises(LuksUnsupportedError):
        decrypt_payload(path, io.BytesIO(), vk)
    with pytest.raises(LuksUnsupportedError):
        encrypt_payload(io.BytesIO(bytes(4096)), path, vk)


def test_integrity_segments_are_refused_for_payload_crypto(luks2_blob: bytes, passphrase: bytes,
                                                           tmp_path: Any) -> None:
    import io

    from hotluks.luks import decrypt_payload, unlock

    doc = _doc(luks2_blob)
    doc["segments"]["0"]["integrity"] = {"type": "hmac(sha256)", "journal_encryption": "none",
                                         "journal_integrity": "none"}
    path = tmp_path / "integrity.img"
    path.write_bytes(_repack(luks2_blob, doc) + bytes(1 << 20))
    hdr = open_header(path)
    assert hdr.data_segment.integrity == "hmac(sha256)"
    vk = unlock(hdr, passphrase)
    with pytest.raises(LuksUnsupportedError, match="integrity"):
        decrypt_payload(path, io.BytesIO(), vk)


def test_keyslot_not_bound_to_the_segment_never_unlocks(luks2_blob: bytes, passphrase: bytes) -> None:
    """A keyslot whose digest does not cover the data segment opens nothing (cryptsetup: no key available)."""
    doc = _doc(luks2_blob)
    dig = doc["digests"]["0"]
    doc["digests"]["1"] = {**copy.deepcopy(dig), "segments": []}
    dig["keyslots"] = []
    hdr = open_header(_repack(luks2_blob, doc))
    with pytest.raises(WrongPassphraseError):
        unlock_header(hdr, passphrase)
    with pytest.raises(WrongPassphraseError, match="not assigned to the data segment"):
        unlock_header(hdr, passphrase, keyslot=0)


@pytest.mark.parametrize("area", [b"x{}" , b"{}", b"{}\0junk"], ids=["no-brace", "no-nul", "bytes-after-nul"])
def test_luks2_json_area_framing(area: bytes) -> None:
    from hotluks.luks.luks2_json import Invalid, validate_area

    with pytest.raises(Invalid):
        validate_area(area + (b"" if area == b"{}" else bytes(16)))


def test_keyslot_writes_are_ordered_for_crash_safety(luks2_blob: bytes, passphrase: bytes) -> None:
    """Add: material first (unreferenced area), then primary, then secondary. Remove: both copies, then the wipe."""
    hdr = open_header(luks2_blob)
    vk = unlock_header(hdr, passphrase)
    kdf = KdfParams("pbkdf2", b"s" * 32, hash="sha256", iterations=1000)
    index, writes = create.add_keyslot(hdr, vk.key, b"new", kdf, lambda n: bytes(n))
    assert [w.offset for w in writes] == [writes[0].offset, 0, hdr.hdr_size] and writes[0].offset >= 2 * hdr.hdr_size
    assert writes[1].data[:6] == luks2.MAGIC1 and writes[2].data[:6] == luks2.MAGIC2
    removal = create.remove_keyslot(hdr, 0, lambda n: bytes(n))
    assert [w.offset for w in removal[:2]] == [0, hdr.hdr_size] and removal[2].offset == hdr.keyslots[0].area_offset
