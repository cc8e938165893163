"""The streaming pipeline: byte-exact against cryptography's own XTS, ordered, bounded, quiet on a closed pipe."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

import hotluks.luks as luks
from hotluks.errors import InputError
from hotluks.luks import pipeline
from hotluks.luks.sectors import crypt_sectors, parse_cipher


def _xts_oracle(key: bytes, data: bytes, sector: int, first_iv: int, encrypt: bool, plain32: bool = False) -> bytes:
    """One ``cryptography`` XTS object per sector: the textbook definition, no numpy."""
    out = bytearray()
    for i in range(len(data) // sector):
        iv = first_iv + i * (sector // 512)
        tweak = (iv & 0xFFFFFFFF if plain32 else iv).to_bytes(16, "little")
        c = Cipher(algorithms.AES(key), modes.XTS(tweak))
        ctx = c.encryptor() if encrypt else c.decryptor()
        out += ctx.update(data[i * sector:(i + 1) * sector]) + ctx.finalize()
    return bytes(out)


def _run(spec: str, key: bytes, data: bytes, *, sector: int, iv_base: int, encrypt: bool, chunk: int,
         workers: int = 2) -> bytes:
    src = io.BytesIO(data)
    out = bytearray()

    def write_at(pos: int, view: memoryview) -> None:
        assert pos == len(out), "writes arrive in order"
        out.extend(view)

    run = pipeline.SectorPipeline(parse_cipher(spec), key, sector_size=sector, iv_base=iv_base, encrypt=encrypt,
                                  chunk=chunk, workers=workers)
    assert run.run(pipeline.stream_reader(src), write_at) == len(data)
    return bytes(out)


@pytest.mark.parametrize("key_bytes", [32, 64])
@pytest.mark.parametrize("sector", [512, 1024, 4096])
@pytest.mark.parametrize("encrypt", [False, True])
def test_fast_xts_is_bit_exact_against_per_sector_cryptography(key_bytes: int, sector: int, encrypt: bool) -> None:
    key = os.urandom(key_bytes)
    data = os.urandom(sector * 700 + 0)  # several slices and chunks, not a multiple of either
    got = _run("aes-xts-plain64", key, data, sector=sector, iv_base=(1 << 40) + 3, encrypt=encrypt, chunk=96 << 10)
    assert got == _xts_oracle(key, data, sector, (1 << 40) + 3, encrypt)


def test_fast_xts_plain_wraps_the_iv_at_32_bits() -> None:
    key = os.urandom(64)
    data = os.urandom(512 * 2000)
    first = (1 << 32) - 1000  # the sector numbers cross 2^32 inside a slice
    got = _run("aes-xts-plain", key, data, sector=512, iv_base=first, encrypt=False, chunk=256 << 10)
    assert got == _xts_oracle(key, data, 512, first, False, plain32=True)
    assert got != _xts_oracle(key, data, 512, first, False)


@pytest.mark.parametrize("spec", ["aes-cbc-essiv:sha256", "aes-cbc-plain64", "aes-ecb"])
def test_other_ciphers_run_on_the_pool_unchanged(spec: str) -> None:
    key = os.urandom(32)
    data = os.urandom(512 * 600)
    for encrypt in (False, True):
        got = _run(spec, key, data, sector=512, iv_base=7, encrypt=encrypt, chunk=40 << 10)
        assert got == crypt_sectors(parse_cipher(spec), key, data, sector_size=512, first_iv=7, encrypt=encrypt)


def test_one_worker_and_many_give_the_same_bytes() -> None:
    key = os.urandom(64)
    data = os.urandom(3 << 20)
    one = _run("aes-xts-plain64", key, data, sector=512, iv_base=0, encrypt=True, chunk=1 << 20, workers=1)
    many = _run("aes-xts-plain64", key, data, sector=512, iv_base=0, encrypt=True, chunk=64 << 10, workers=4)
    assert one == many


class _Trickle(io.RawIOBase):
    """A pipe-like source: short reads of odd sizes."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def readable(self) -> bool:
        return True

    def readinto(self, view: memoryview) -> int:  # type: ignore[override]
        n = min(len(view), 777, len(self.data) - self.pos)
        view[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def test_short_reads_are_gathered_and_a_partial_last_sector_is_padded() -> None:
    key = os.urandom(64)
    data = os.urandom(512 * 100 + 5)
    run = pipeline.SectorPipeline(parse_cipher("aes-xts-plain64"), key, sector_size=512, iv_base=0, encrypt=True,
                                  chunk=8 << 10)
    out = bytearray()
    n = run.run(pipeline.stream_reader(_Trickle(data)), lambda pos, view: out.extend(view), pad_last=True)
    padded = data + bytes(507)
    assert n == len(padded) and bytes(out) == _xts_oracle(key, padded, 512, 0, True)
    dropped = bytearray()
    n = run.run(pipeline.stream_reader(_Trickle(data)), lambda pos, view: dropped.extend(view))
    assert n == 512 * 100 and bytes(dropped) == bytes(out[:n])


def test_memory_is_bounded_by_one_chunk_per_worker() -> None:
    chunk, workers = 16 << 10, 3
    total = 64 * chunk
    state = {"read": 0, "written": 0, "ahead": 0}
    lock = threading.Lock()
    second_chunk_read = threading.Event()

    def read_into(view: memoryview) -> int:
        n = min(len(view), total - state["read"])
        view[:n] = bytes(n)
        with lock:
            state["read"] += n
            state["ahead"] = max(state["ahead"], state["read"] - state["written"])
            if state["read"] >= 2 * chunk:
                second_chunk_read.set()
        return n

    def write_at(pos: int, view: memoryview) -> None:
        if pos == 0:  # the first write waits: another worker must be reading meanwhile (I/O overlaps)
            assert second_chunk_read.wait(10)
        with lock:
            state["written"] += len(view)

    run = pipeline.SectorPipeline(parse_cipher("aes-xts-plain64"), os.urandom(64), sector_size=512, iv_base=0,
                                  encrypt=False, chunk=chunk, workers=workers)
    assert run.run(read_into, write_at) == total
    assert state["written"] == total
    assert chunk < state["ahead"] <= workers * chunk  # it does read ahead, and never more than a chunk per worker


def test_limit_stops_reading_and_a_writer_error_stops_the_run() -> None:
    key = os.urandom(64)
    data = os.urandom(100 << 10)
    run = pipeline.SectorPipeline(parse_cipher("aes-xts-plain64"), key, sector_size=512, iv_base=0, encrypt=False,
                                  chunk=8 << 10)
    out = bytearray()
    assert run.run(pipeline.stream_reader(io.BytesIO(data)), lambda p, v: out.extend(v), limit=20 << 10) == 20 << 10
    assert bytes(out) == _xts_oracle(key, data[:20 << 10], 512, 0, False)
    calls = []

    def failing(pos: int, view: memoryview) -> None:
        calls.append(pos)
        if pos >= 16 << 10:
            raise InputError("the input is larger than the LUKS data segment")

    with pytest.raises(InputError):
        run.run(pipeline.stream_reader(io.BytesIO(data)), failing)
    assert calls == [0, 8 << 10, 16 << 10]  # in order, and nothing written after the failure


def _volume(tmp_path: Path, payload_mib: int) -> Path:
    img = tmp_path / "vol.img"
    with open(img, "wb") as f:
        f.truncate((2 + payload_mib) << 20)
    luks.format_luks1(img, b"pw", cipher="aes-xts-plain64", key_size=512,
                      kdf=luks.make_kdf("pbkdf2", iterations=1000), digest_iterations=1000)
    return img


def test_encrypt_then_decrypt_payload_round_trips_across_chunks(tmp_path: Path) -> None:
    img = _volume(tmp_path, 3)
    plain = os.urandom((3 << 20) - 512 * 3 - 100)
    vk = luks.unlock(img, b"pw")
    n = luks.encrypt_payload(io.BytesIO(plain), img, vk, chunk=1 << 20)
    assert n == len(plain) + 100
    out = io.BytesIO()
    assert luks.decrypt_payload(img, out, vk, chunk=192 << 10) == 3 << 20
    assert out.getvalue()[:len(plain)] == plain and out.getvalue()[len(plain):n] == bytes(100)
    raw = img.read_bytes()[2 << 20:(2 << 20) + 4096]
    assert raw == _xts_oracle(vk.key, plain[:4096], 512, 0, True)


def _cli(*args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "hotluks.cli.main", *args], capture_output=True,
                          **kw)  # type: ignore[call-overload, no-any-return]


def test_cli_progress_only_when_asked_or_on_a_terminal_and_never_quiet(tmp_path: Path) -> None:
    img = _volume(tmp_path, 2)
    key = tmp_path / "k"
    key.write_bytes(b"pw")
    out = tmp_path / "plain"
    forced = _cli("luks", "decrypt", str(img), str(out), "--key-file", str(key), "--progress")
    assert forced.returncode == 0 and b"100.0%" in forced.stderr and forced.stderr.endswith(b"\n")
    for quiet in (["-q"], ["--json"], []):  # -q, --json, and stderr not a terminal
        args = ["--json", "luks", "decrypt"] if quiet == ["--json"] else ["luks", "decrypt", *quiet]
        done = _cli(*args, str(img), str(out), "--key-file", str(key))
        assert done.returncode == 0 and done.stderr == b"", quiet
    assert out.stat().st_size == 2 << 20


def test_decrypt_to_a_closed_pipe_exits_quietly(tmp_path: Path) -> None:
    img = _volume(tmp_path, 16)
    key = tmp_path / "k"
    key.write_bytes(b"pw")
    proc = subprocess.Popen([sys.executable, "-m", "hotluks.cli.main", "luks", "decrypt", str(img), "-",
                             "--key-file", str(key)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert len(proc.stdout.read(100)) == 100
    proc.stdout.close()  # like ``| head -c 100``
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 1
    assert err == b""


class _ShortWriter(io.RawIOBase):
    """A raw file that takes at most 1000 bytes per write, as a raw pipe may."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, b: object) -> int:
        view = memoryview(b)  # type: ignore[arg-type]
        self.data += view[:1000]
        return min(1000, len(view))


def test_short_writes_of_a_raw_output_are_completed(tmp_path: Path) -> None:
    img = _volume(tmp_path, 1)
    vk = luks.unlock(img, b"pw")
    plain = os.urandom(1 << 20)
    luks.encrypt_payload(io.BytesIO(plain), img, vk)
    out = _ShortWriter()
    assert luks.decrypt_payload(img, out, vk) == 1 << 20  # type: ignore[arg-type]
    assert bytes(out.data) == plain
