"""The hostile-header corpus through the real CLI and the attach preflight, one process per case.

Bounds per case (issue 14): no traceback, never exit 70, no hang over 10 s, peak memory
under 256 MiB — for ``hotluks luks dump`` and for the preflight an attach runs (with a 5 s
``--timeout``). Headers start as real cryptsetup headers (LUKS1, LUKS2) and are damaged at
byte level or in their JSON with valid checksums, so the checks below the checksum and the
work a header can ask for (KDF cost, memory, sizes, counts) are all exercised.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotluks.luks import luks2

pytestmark = pytest.mark.cryptsetup

MIN_CASES = 57
MAX_SECONDS = 10.0
MAX_RSS_KIB = 256 * 1024
PASSPHRASE = b"hostile corpus"
HDR = 0x4000
Mutation = Callable[[bytearray], bytearray]

PREFLIGHT = """
import asyncio, sys
from hotluks.model import Disk
from hotluks.runner.preflight import run_preflight
from hotluks.secrets import SecretValue
from hotluks.errors import HotluksError
disk = Disk.from_xml(sys.argv[1])
try:
    print(asyncio.run(run_preflight(disk, SecretValue(sys.argv[2].encode()), {}, 5.0)))
except HotluksError as exc:
    print(f"refused ({type(exc).__name__}): {exc}")
    sys.exit(exc.exit_code)
"""


def _u32(offset: int, value: int) -> Mutation:
    def apply(b: bytearray) -> bytearray:
        b[offset:offset + 4] = struct.pack(">I", value)
        return b
    return apply


def _bytes(offset: int, value: bytes) -> Mutation:
    def apply(b: bytearray) -> bytearray:
        b[offset:offset + len(value)] = value
        return b
    return apply


def _truncate(size: int) -> Mutation:
    return lambda b: b[:size]


class _Sparse(bytearray):
    """A header followed by a hole up to ``size`` (written with truncate, not bytes)."""

    def __init__(self, head: bytearray, size: int):
        super().__init__(head)
        self.size = size


def _slot(index: int, field: int, value: int) -> Mutation:
    return _u32(208 + index * 48 + field, value)


LUKS1: dict[str, Mutation] = {
    "bad-magic": _bytes(0, b"LUKS\xba\xbf"),
    "version-0": _bytes(6, b"\x00\x00"),
    "version-ffff": _bytes(6, b"\xff\xff"),
    "cipher-escape": _bytes(8, b"\x1b[31maes\x1b[0m".ljust(32, b"\0")),
    "cipher-unterminated": _bytes(8, b"a" * 32),
    "mode-garbage": _bytes(40, b"\xff" * 32),
    "hash-unknown": _bytes(72, b"md17".ljust(32, b"\0")),
    "hash-escape": _bytes(72, b"\x07\x1b]0;pwned\x07".ljust(32, b"\0")),
    "payload-offset-max": _u32(104, 0xFFFFFFFF),
    "payload-offset-1": _u32(104, 1),
    "key-bytes-0": _u32(108, 0),
    "key-bytes-1": _u32(108, 1),
    "key-bytes-max": _u32(108, 0xFFFFFFFF),
    "mk-iterations-max": _u32(164, 0x7FFFFFFF),
    "mk-iterations-0": _u32(164, 0),
    "slot0-iterations-max": _slot(0, 4, 0x7FFFFFFF),
    "slot0-iterations-0": _slot(0, 4, 0),
    "slot0-stripes-max": _slot(0, 44, 0xFFFFFFFF),
    "slot0-stripes-0": _slot(0, 44, 0),
    "slot0-offset-max": _slot(0, 40, 0xFFFFFFFF),
    "slot0-offset-0": _slot(0, 40, 0),
    "slot0-state-garbage": _slot(0, 0, 0xDEADBEEF),
    "all-slots-garbage": lambda b: bytearray(b[:208]) + bytearray(os.urandom(8 * 48)) + b[208 + 8 * 48:],
    "uuid-escape": _bytes(168, b"\x1b[2J\x1b[H".ljust(40, b"\0")),
    "truncated-0": _truncate(0),
    "truncated-6": _truncate(6),
    "truncated-592": _truncate(592),
    "truncated-4096": _truncate(4096),
    "keyslot-near-3GiB": lambda b: _Sparse(_slot(0, 40, (3 << 30) // 512 - 600)(b), 3 << 30),
    "random-after-magic": lambda b: bytearray(b[:6]) + bytearray(os.urandom(4090)) + b[4096:],
}


def _doc(blob: bytes) -> dict[str, Any]:
    return dict(json.loads(blob[4096:HDR].split(b"\0", 1)[0]))


def _write_doc(blob: bytearray, text: bytes) -> bytearray:
    """Put ``text`` in the JSON area of both copies with valid checksums (even when it is not JSON)."""
    area = (text + bytes(max(0, HDR - 4096 - len(text))))[: HDR - 4096]
    for offset in (0, HDR):
        head = bytearray(blob[offset:offset + 4096])
        whole = bytes(head[:luks2.CSUM_OFFSET]) + bytes(64) + bytes(head[luks2.CSUM_OFFSET + 64:]) + area
        csum = luks2.checksum("sha256", whole)
        head[luks2.CSUM_OFFSET:luks2.CSUM_OFFSET + 64] = csum + bytes(64 - len(csum))
        blob[offset:offset + HDR] = bytes(head) + area
    return blob


def _json(change: Callable[[dict[str, Any]], Any]) -> Mutation:
    def apply(b: bytearray) -> bytearray:
        doc = _doc(bytes(b))
        replaced = change(doc)
        return _write_doc(b, json.dumps(replaced if replaced is not None else doc).encode())
    return apply


def _raw_json(text: bytes) -> Mutation:
    return lambda b: _write_doc(b, text)


def _kdf(**fields: Any) -> Mutation:
    def change(doc: dict[str, Any]) -> None:
        doc["keyslots"]["0"]["kdf"].update(fields)
    return _json(change)


def _many_keyslots(count: int) -> Mutation:
    def change(doc: dict[str, Any]) -> None:
        slot = doc["keyslots"]["0"]
        doc["keyslots"] = {str(i): slot for i in range(count)}
        doc["digests"]["0"]["keyslots"] = [str(i) for i in range(count)]
    return _json(change)


LUKS2: dict[str, Mutation] = {
    "pbkdf2-iterations-max": _kdf(type="pbkdf2", hash="sha256", iterations=0x7FFFFFFF),
    "pbkdf2-iterations-huge": _kdf(type="pbkdf2", hash="sha256", iterations=1 << 62),
    "pbkdf2-iterations-1": _kdf(type="pbkdf2", hash="sha256", iterations=1),
    "pbkdf2-iterations-negative": _kdf(type="pbkdf2", hash="sha256", iterations=-5),
    "argon2-memory-4GiB": _kdf(type="argon2id", time=4, memory=4 << 20, cpus=1),
    "argon2-memory-huge": _kdf(type="argon2id", time=4, memory=1 << 40, cpus=1),
    "argon2-time-max": _kdf(type="argon2i", time=0x7FFFFFFF, memory=32, cpus=1),
    "argon2-cpus-huge": _kdf(type="argon2id", time=4, memory=1 << 20, cpus=1 << 20),
    "kdf-type-unknown": _kdf(type="scrypt"),
    "many-keyslots-8000": _many_keyslots(8000),
    "many-keyslots-64": _many_keyslots(64),
    "area-offset-huge": _json(lambda d: d["keyslots"]["0"]["area"].update(offset=str(1 << 62))),
    "area-size-huge": _json(lambda d: d["keyslots"]["0"]["area"].update(size=str(1 << 62))),
    "area-near-3GiB": lambda b: _Sparse(_json(lambda d: d["keyslots"]["0"]["area"].update(
        offset=str((3 << 30) - (1 << 20))))(b), 3 << 30),
    "key-size-huge": _json(lambda d: d["keyslots"]["0"].update(key_size=1 << 30)),
    "af-stripes-huge": _json(lambda d: d["keyslots"]["0"]["af"].update(stripes=1 << 31)),
    "segment-offset-huge": _json(lambda d: d["segments"]["0"].update(offset=str(1 << 62))),
    "segment-size-garbage": _json(lambda d: d["segments"]["0"].update(size="\x1b[31m")),
    "segment-encryption-escape": _json(lambda d: d["segments"]["0"].update(encryption="aes-\x1b[2J-plain64")),
    "digest-iterations-max": _json(lambda d: d["digests"]["0"].update(iterations=0x7FFFFFFF)),
    "digest-no-keyslots": _json(lambda d: d["digests"]["0"].update(keyslots=[])),
    "config-json-size-huge": _json(lambda d: d["config"].update(json_size=str(1 << 40))),
    "deep-nesting": _raw_json(b"{\"a\":" * 4000 + b"1" + b"}" * 4000),
    "big-number": _raw_json(b'{"keyslots":{},"tokens":{},"segments":{},"digests":{},"config":{"json_size":"1'
                            + b"9" * 5000 + b'"}}'),
    "not-json": _raw_json(b"{this is not json"),
    "json-array": _raw_json(b"[1,2,3]"),
    "duplicate-keys": _raw_json(b'{"keyslots":{},"keyslots":{}}'),
    "json-nul-inside": _raw_json(b'{"keyslots":{}\0,"x":1}'),
    "tokens-flood": _json(lambda d: d.update(tokens={str(i): {"type": "x" * 64, "keyslots": []}
                                                      for i in range(200)})),
    "hdr-size-garbage": lambda b: _u32(8 + 4, 0xFFFFFFFF)(b),
}


#: changes that still leave an openable header (a detached header's payload offset is the payload's
#: business; the UUID and tokens play no part in unlocking; dump shows the UUID's escapes escaped)
STILL_VALID = {"luks1-payload-offset-max", "luks1-payload-offset-1", "luks1-uuid-escape", "luks2-tokens-flood"}


def corpus(luks1: bytes, luks2_blob: bytes) -> dict[str, bytearray]:
    cases = {f"luks1-{n}": m(bytearray(luks1)) for n, m in LUKS1.items()}
    cases.update({f"luks2-{n}": m(bytearray(luks2_blob)) for n, m in LUKS2.items()})
    return cases


def _write(path: Path, blob: bytearray) -> None:
    path.write_bytes(bytes(blob))
    if isinstance(blob, _Sparse):
        os.truncate(path, blob.size)


#: runs one case and reports on it; a fresh process, so RUSAGE_CHILDREN is that case's alone
#: (the preflight's worker included)
MEASURE = """
import json, resource, subprocess, sys, time
started = time.monotonic()
try:
    proc = subprocess.run(sys.argv[2:], capture_output=True, timeout=float(sys.argv[1]), stdin=subprocess.DEVNULL)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
except subprocess.TimeoutExpired as exc:
    code, out, err = "hang", exc.stdout or b"", exc.stderr or b""
print(json.dumps({"exit": code, "seconds": time.monotonic() - started,
                  "rss": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "traceback": b"Traceback" in err, "err": err.decode(errors="replace")[-300:],
                  "out": out.decode(errors="replace")[-300:]}))
"""


def _run(argv: list[str]) -> dict[str, Any]:
    """One case in its own process: exit code, seconds, peak memory in KiB, whether a traceback showed."""
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(MAX_SECONDS + 5), *argv], capture_output=True,
                          timeout=MAX_SECONDS + 30)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, cryptsetup: Any) -> tuple[bytes, bytes]:
    root = tmp_path_factory.mktemp("hostile-src")
    key = root / "key"
    key.write_bytes(PASSPHRASE)
    blobs = []
    for kind in ("luks1", "luks2"):
        header = root / f"{kind}.hdr"
        payload = root / "payload"
        payload.write_bytes(bytes(1 << 20))
        cryptsetup("luksFormat", "--type", kind, "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
                   "--header", str(header), "--key-file", str(key), str(payload))
        blobs.append(header.read_bytes())
    return blobs[0], blobs[1]


def test_corpus_is_large_enough(sources: tuple[bytes, bytes]) -> None:
    assert len(corpus(*sources)) >= MIN_CASES


def test_every_hostile_header_is_bounded(sources: tuple[bytes, bytes], tmp_path: Path) -> None:
    payload = tmp_path / "payload.img"
    payload.write_bytes(bytes(1 << 20))
    results = {}
    for name, blob in corpus(*sources).items():
        header = tmp_path / f"{name}.hdr"
        _write(header, blob)
        dump = _run([sys.executable, "-m", "hotluks", "luks", "dump", str(header), "--json"])
        xml = (f"<disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{payload}'/>"
               "<target dev='vdb' bus='virtio'/><encryption format='luks' engine='qemu'>"
               "<secret type='passphrase' usage='hostile'/>"
               f"<header type='file'><source file='{header}'/></header></encryption></disk>")
        preflight = _run([sys.executable, "-c", PREFLIGHT, xml, PASSPHRASE.decode()])
        results[name] = (dump, preflight)
        header.unlink()
    bad = {name: r for name, r in results.items()
           if any(c["traceback"] or c["exit"] in ("hang", 70) or c["seconds"] > MAX_SECONDS or c["rss"] > MAX_RSS_KIB
                  for c in r)}
    assert not bad, json.dumps(bad, indent=1, default=str)
    # dump refuses (2) or shows (0) every case; the preflight never lets a damaged header through as "opens"
    assert all(dump["exit"] in (0, 2) for dump, _ in results.values())
    opened = sorted(n for n, (_, p) in results.items() if p["exit"] == 0 and p["out"].startswith("header on"))
    assert set(opened) <= STILL_VALID, sorted(set(opened) - STILL_VALID)
    # and nothing a header carries reaches the terminal raw
    assert not any("\x1b" in dump.get("out", "") for dump, _ in results.values())
