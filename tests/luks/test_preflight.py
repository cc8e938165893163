"""Preflight against real header files, in its real worker process: binding, policy, LUKS2 + engine qemu,
unchecked ciphers and the killable timeout."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time
from pathlib import Path

import pytest

from hotluks.errors import PreflightError, WrongPassphraseError
from hotluks.luks import create
from hotluks.luks.kdf import KdfParams
from hotluks.model import Disk
from hotluks.runner.preflight import run_preflight
from hotluks.secrets import SecretValue

PASS = b"unit test pass"
XML = """<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{path}'/>
<encryption format='{fmt}'{engine}><secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>
</encryption><target dev='vde' bus='virtio'/></disk>"""
SLOT0_ITERATIONS = 208 + 4  # LUKS1: keyslot 0's iteration count


def _disk(path: Path, fmt: str = "luks", engine: str = "") -> Disk:
    return Disk.from_xml(XML.format(path=path, fmt=fmt, engine=f" engine='{engine}'" if engine else ""))


def _preflight(path: Path, passphrase: bytes = PASS, timeout: float = 30.0, **kwargs: object) -> str:
    disk = _disk(path, **kwargs)  # type: ignore[arg-type]
    return asyncio.run(run_preflight(disk, SecretValue(passphrase), {}, timeout))


def _write(tmp_path: Path, blob: bytes | bytearray, name: str = "vol.img") -> Path:
    path = tmp_path / name
    path.write_bytes(bytes(blob) + bytes(1 << 20))
    return path


def test_right_and_wrong_passphrase(tmp_path: Path, luks1_blob: bytes) -> None:
    path = _write(tmp_path, luks1_blob)
    assert "opens with the passphrase" in _preflight(path)
    with pytest.raises(PreflightError, match="does not open") as exc:
        _preflight(path, b"wrong passphrase")
    assert b"wrong passphrase" not in str(exc.value).encode()


def test_luks2_header_with_engine_qemu_is_refused_with_the_way_out(tmp_path: Path, luks2_blob: bytes) -> None:
    path = _write(tmp_path, luks2_blob)
    with pytest.raises(PreflightError, match="cryptsetup convert --type luks1") as exc:
        _preflight(path)
    assert exc.value.exit_code == 2 and "librbd" in str(exc.value)


def _patched(blob: bytes, offset: int, value: bytes) -> bytearray:
    out = bytearray(blob)
    out[offset:offset + len(value)] = value
    return out


def _luks1(cipher: str = "aes-xts-plain64", iterations: int = 1000, key_bytes: int = 64) -> bytes:
    return create.build_luks1(os.urandom(key_bytes), PASS, cipher=cipher, hash_name="sha256",
                              kdf_iterations=iterations, digest_iterations=1000, uuid="u", detached=True,
                              rand=os.urandom).blob


@pytest.mark.parametrize("name", ["pbkdf2-10-iterations", "cipher-null", "ecb"])
def test_weak_headers_are_refused_unless_allowed(tmp_path: Path, name: str) -> None:
    blob, reason = {
        "pbkdf2-10-iterations": (_luks1(iterations=10), "PBKDF2 with 10 iterations"),
        "cipher-null": (_patched(_luks1(), 8, b"cipher_null".ljust(32, b"\0")), "not encrypted"),
        "ecb": (_luks1("aes-ecb", key_bytes=32), "ECB"),
    }[name]
    path = _write(tmp_path, blob)
    with pytest.raises(PreflightError, match=reason) as exc:
        _preflight(path)
    assert "--allow-weak-header" in str(exc.value)
    disk = _disk(path)
    note = asyncio.run(run_preflight(disk, SecretValue(PASS), {}, 30.0, allow_weak_header=True))
    assert reason in note  # allowed, and still said
    if name != "cipher-null":  # the engine cannot compute cipher_null keyslots: "not checked"
        assert "opens with the passphrase" in note


def test_cipher_the_engine_cannot_compute_is_not_checked(tmp_path: Path, luks1_blob: bytes) -> None:
    path = _write(tmp_path, _patched(luks1_blob, 8, b"camellia".ljust(32, b"\0")))
    note = _preflight(path)
    assert note.startswith("not checked:") and "camellia" in note


def test_hostile_kdf_is_cut_off_at_the_timeout(tmp_path: Path, luks1_blob: bytes) -> None:
    path = _write(tmp_path, _patched(luks1_blob, SLOT0_ITERATIONS, struct.pack(">I", 2**31 - 1)))
    start = time.monotonic()
    with pytest.raises(PreflightError, match="timeout"):
        _preflight(path, timeout=2.0)
    assert time.monotonic() - start < 6


def test_unbound_keyslot_does_not_pass_preflight(tmp_path: Path, luks1_blob: bytes) -> None:
    """LUKS1 has one digest; an unbound keyslot needs LUKS2, which engine='qemu' refuses first: use luks-any's
    librbd-free path through a detached LUKS2 header read by the engine directly."""
    from hotluks.luks import luks2, open_header
    from hotluks.luks.keyslots import unlock_header

    blob = create.build_luks2(os.urandom(64), PASS, cipher="aes-xts-plain64",
                              kdf=KdfParams("pbkdf2", os.urandom(32), iterations=1000), digest_hash="sha256",
                              digest_iterations=1000, uuid="u", detached=True, sector_size=512,
                              rand=os.urandom).blob
    hdr = open_header(blob)
    assert hdr.json is not None
    doc = json.loads(json.dumps(hdr.json))
    doc["digests"]["1"] = {**doc["digests"]["0"], "segments": []}
    doc["digests"]["0"] = {**doc["digests"]["0"], "keyslots": []}
    packed = luks2.pack(doc, hdr_size=hdr.hdr_size, seqid=2, uuid="u")
    unbound = open_header(packed + blob[len(packed):])
    with pytest.raises(WrongPassphraseError):
        unlock_header(unbound, PASS)
