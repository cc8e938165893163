"""Hostile headers cost bounded time and memory (issue 14, item 4)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hotluks.errors import LuksUnsupportedError, WrongPassphraseError
from hotluks.luks import create, luks1, luks2, open_header
from hotluks.luks.kdf import KdfParams, argon2
from hotluks.luks.keyslots import unlock_header

PASS = b"unit test pass"


def test_sparse_3gib_header_reads_only_what_it_needs(tmp_path: Path) -> None:
    """A LUKS1 keyslot at the end of a 3 GiB sparse file: open + unlock stay far below 3 GB of memory."""
    size = 3 << 30
    key = os.urandom(32)
    blob = bytearray(create.build_luks1(key, PASS, cipher="aes-xts-plain64", hash_name="sha256", kdf_iterations=1000,
                                        digest_iterations=1000, uuid="u", detached=True, rand=os.urandom).blob)
    raw = luks1.raw_slots(bytes(blob))
    far = (size - (1 << 20)) // luks1.SECTOR
    material = bytes(blob[raw[0].offset * 512:(raw[0].offset + luks1.af_sectors(32)) * 512])
    phdr = luks1.replace_slot(bytes(blob[:luks1.PHDR_SIZE]), 0, luks1.RawSlot(raw[0].active, raw[0].iterations,
                                                                             raw[0].salt, far, raw[0].stripes))
    path = tmp_path / "sparse.hdr"
    with open(path, "wb") as f:
        f.write(phdr + bytes(blob[luks1.PHDR_SIZE:]))
        f.seek(far * 512)
        f.write(material)
        f.truncate(size)
    script = textwrap.dedent(f"""
        from hotluks.luks import unlock
        vk = unlock({str(path)!r}, {PASS!r})
        peak = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0].split()[1]
        print(vk.keyslot, peak)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "0"
    assert int(out[1]) < 200 * 1024  # KiB: cryptsetup needs ~6 MB, the old engine read all 3 GB


def _many_keyslots(count: int) -> bytes:
    kdf = KdfParams("pbkdf2", os.urandom(32), iterations=1000)
    hdr_size = 4 << 20
    base = create.build_luks2(os.urandom(64), PASS, cipher="aes-xts-plain64", kdf=kdf, digest_hash="sha256",
                              digest_iterations=1000, uuid="u", detached=True, sector_size=512, rand=os.urandom)
    doc = copy.deepcopy(open_header(base.blob).json)
    assert doc is not None
    keyslots_size = 64 << 20
    doc["config"] = {"json_size": str(hdr_size - 4096), "keyslots_size": str(keyslots_size)}
    template = doc["keyslots"].pop("0")
    template["af"]["stripes"] = 1
    for i in range(count):
        slot = copy.deepcopy(template)
        slot["area"]["offset"] = str(2 * hdr_size + i * 4096)
        slot["area"]["size"] = "4096"
        doc["keyslots"][str(i)] = slot
    doc["digests"]["0"]["keyslots"] = [str(i) for i in range(count)]
    return luks2.pack(doc, hdr_size=hdr_size, seqid=1, uuid="u") + bytes(keyslots_size)


def test_many_keyslots_are_validated_in_linear_time() -> None:
    blob = _many_keyslots(8000)
    start = time.perf_counter()
    hdr = open_header(blob)
    assert len(hdr.keyslots) == 8000
    with pytest.raises(WrongPassphraseError):
        unlock_header(hdr, b"wrong")  # only keyslots 0..31 are tried, as cryptsetup does
    assert time.perf_counter() - start < 10  # the quadratic checks took 12.8 s here


def test_argon2_memory_is_capped() -> None:
    with pytest.raises(LuksUnsupportedError, match="at most"):
        argon2("argon2id", b"p", bytes(16), time=1, memory_kib=2 * 1024 * 1024, cpus=1, length=32)
