"""Streaming payload crypto on every core: read, crypt and write overlap, output stays in order.

The payload is cut into chunks (default 512 KiB). Each of ``workers`` threads (one per
core, the calling thread included) takes the next chunk — reads are serialised and in
order — crypts it, and writes it when its turn comes, so chunk *i* is written while
chunk *i+1* is crypted on the other core. numpy, ``cryptography`` and the I/O calls
release the GIL, so the workers really run side by side, and a chunk stays in one
core's cache from read to write. Memory is bounded by ``workers × (2 × chunk + 1 MiB of
tweak scratch)`` — 4 MiB on 2 cores — whatever the payload size.

aes-xts-plain/plain64 takes a fast path: AES runs in ECB through ``cryptography``
over cache-sized slices and every XTS tweak of a slice (``E_k2(iv) · x^j``) is built
with one broadcast shift per column group, instead of repeated doubling. Every other
cipher goes through :func:`hotluks.luks.sectors.crypt_sectors` on the workers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any

from hotluks.luks.sectors import IV_UNIT, CipherSpec, crypt_sectors

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

CHUNK = 512 << 10  # one worker's chunk: read, crypted and written while in its core's cache
SLICE = 512 << 10  # one slice's tweak table + scratch (1 MiB) stay near a core's L2
Progress = Callable[[int, int], None]
#: fills a buffer from the source; returns bytes read (0 at the end)
ReadInto = Callable[[memoryview], int]
#: writes a whole buffer at a payload position (bytes from the segment start)
WriteAt = Callable[[int, memoryview], object]


def default_workers() -> int:
    """Crypto threads: one per usable core (at least 1, at most 8)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        cores = os.cpu_count() or 1
    return max(1, min(8, cores))


def _fast_xts(spec: CipherSpec, key: bytes) -> bool:
    return spec.cipher == "aes" and spec.chain == "xts" and spec.ivgen in ("plain", "plain64") \
        and len(key) in (32, 48, 64)


class _XtsSlicer:
    """aes-xts-plain(64) over a whole buffer, slice by slice, into a separate output buffer."""

    def __init__(self, spec: CipherSpec, key: bytes, sector_size: int, encrypt: bool) -> None:
        import numpy as np
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        half = len(key) // 2
        self.plain32 = spec.ivgen == "plain"
        self.sector_size = sector_size
        self.bps = sector_size // 16
        self.step = sector_size // IV_UNIT
        self.encrypt = encrypt
        self.data_cipher = Cipher(algorithms.AES(key[:half]), modes.ECB())
        self.tweak_cipher = Cipher(algorithms.AES(key[half:]), modes.ECB())
        cols = min(self.bps, 32)
        self.shift = np.arange(cols, dtype=np.uint64)[None, :]
        self.back = np.uint64(64) - self.shift  # numpy gives 0 for a 64-bit shift

    def scratch(self, slice_bytes: int) -> dict[str, Any]:
        """Buffers one slice needs (allocated once per in-flight chunk)."""
        import numpy as np

        n = slice_bytes // self.sector_size
        cols = min(self.bps, 32)
        return {"tweaks": np.empty((n, self.bps, 2), dtype="<u8"),
                "over": np.empty((n, cols), dtype="<u8"), "tmp": np.empty((n, cols), dtype="<u8")}

    def _first_tweaks(self, n: int, first_iv: int) -> npt.NDArray[np.uint64]:
        import numpy as np

        blocks = np.zeros((n, 2), dtype="<u8")
        ivs = np.arange(first_iv, first_iv + n * self.step, self.step, dtype=np.uint64)
        blocks[:, 0] = ivs & np.uint64(0xFFFFFFFF) if self.plain32 else ivs
        ctx = self.tweak_cipher.encryptor()
        return np.frombuffer(ctx.update(blocks.tobytes()), dtype="<u8").reshape(n, 2)

    def _tweak_table(self, first: npt.NDArray[np.uint64], sc: dict[str, Any]) -> npt.NDArray[np.uint64]:
        """T[s, j] = first[s] · x^j in GF(2^128), little-endian halves, columns in groups of 32."""
        import numpy as np

        n = first.shape[0]
        table: npt.NDArray[np.uint64] = sc["tweaks"][:n]
        cols = self.shift.shape[1]
        over, tmp = sc["over"][:n], sc["tmp"][:n]
        lo, hi = first[:, 0:1], first[:, 1:2]
        for group in range(0, self.bps, cols):
            if group:  # start of the next group: multiply by x^32 (reduction stays in the low half)
                carry = hi >> np.uint64(32)
                hi = (hi << np.uint64(32)) | (lo >> np.uint64(32))
                lo = (lo << np.uint64(32)) ^ carry ^ (carry << np.uint64(1)) ^ (carry << np.uint64(2)) \
                    ^ (carry << np.uint64(7))
            t_lo, t_hi = table[:, group:group + cols, 0], table[:, group:group + cols, 1]
            np.left_shift(hi, self.shift, out=t_hi)
            np.right_shift(lo, self.back, out=tmp)
            np.bitwise_or(t_hi, tmp, out=t_hi)
            np.right_shift(hi, self.back, out=over)  # bits pushed past x^127, reduced by x^7+x^2+x+1
            np.left_shift(lo, self.shift, out=t_lo)
            np.bitwise_xor(t_lo, over, out=t_lo)
            for bit in (1, 2, 7):
                np.left_shift(over, np.uint64(bit), out=tmp)
                np.bitwise_xor(t_lo, tmp, out=t_lo)
        return table

    def run(self, src: memoryview, dst: memoryview, first_iv: int, sc: dict[str, Any]) -> None:
        """Crypt ``src`` (whole sectors, overwritten as scratch) into ``dst``."""
        import numpy as np

        ctx = self.data_cipher.encryptor() if self.encrypt else self.data_cipher.decryptor()
        per = sc["tweaks"].shape[0] * self.sector_size
        for start in range(0, len(src), per):
            piece = src[start:start + per]
            n = len(piece) // self.sector_size
            table = self._tweak_table(self._first_tweaks(n, first_iv + start // IV_UNIT), sc)
            data = np.frombuffer(piece, dtype="<u8").reshape(n, self.bps, 2)
            np.bitwise_xor(data, table, out=data)
            ctx.update_into(piece, dst[start:start + len(piece) + 16])
            out = np.frombuffer(dst[start:start + len(piece)], dtype="<u8").reshape(n, self.bps, 2)
            np.bitwise_xor(out, table, out=out)


class _Slot:
    """One worker's buffers and, while busy, its chunk's position and length."""

    def __init__(self, chunk: int, scratch: dict[str, Any] | None) -> None:
        self.inbuf = bytearray(chunk)
        self.outbuf = bytearray(chunk + 16)  # ECB's update_into wants a block of slack
        self.scratch = scratch
        self.pos = 0
        self.length = 0


class _Turns:
    """Hands out chunks in source order and lets their writes happen in the same order."""

    def __init__(self) -> None:
        self.read_lock = threading.Lock()
        self.cond = threading.Condition()
        self.next_index = self.next_write = self.pos = self.done = 0
        self.ended = False
        self.error: BaseException | None = None


class SectorPipeline:
    """Crypt a stream of whole sectors on worker threads, writing results in order.

    Each worker takes the next chunk (reads are serialised, in order), crypts it on its
    own core while the others read, crypt or write, then waits for its turn to write.
    A chunk stays in one core's cache from read to write; at most ``workers`` chunks
    are in flight.
    """

    def __init__(self, spec: CipherSpec, key: bytes, *, sector_size: int, iv_base: int, encrypt: bool,
                 chunk: int = CHUNK, workers: int | None = None) -> None:
        spec.check_key_size(len(key))
        self.spec, self.key, self.sector_size, self.iv_base = spec, key, sector_size, iv_base
        self.encrypt = encrypt
        self.chunk = max(sector_size, chunk - chunk % sector_size)
        self.workers = workers or default_workers()
        self.xts = _XtsSlicer(spec, key, sector_size, encrypt) if _fast_xts(spec, key) else None

    def _crypt(self, slot: _Slot) -> None:
        src = memoryview(slot.inbuf)[:slot.length]
        first_iv = self.iv_base + slot.pos // IV_UNIT
        if self.xts is not None and slot.scratch is not None:
            self.xts.run(src, memoryview(slot.outbuf), first_iv, slot.scratch)
        else:
            slot.outbuf[:slot.length] = crypt_sectors(self.spec, self.key, src, sector_size=self.sector_size,
                                                      first_iv=first_iv, encrypt=self.encrypt)

    def _read(self, t: _Turns, slot: _Slot, read_into: ReadInto, limit: int | None, pad_last: bool) -> int | None:
        """Fill ``slot`` with the next chunk; its index, or None at the end."""
        with t.read_lock:
            if t.ended or t.error is not None:
                return None
            want = self.chunk if limit is None else min(self.chunk, limit - t.pos)
            got = _fill(read_into, memoryview(slot.inbuf)[:want]) if want > 0 else 0
            t.ended = got < want or want <= 0
            tail = got % self.sector_size
            if tail and pad_last:
                slot.inbuf[got:got + self.sector_size - tail] = bytes(self.sector_size - tail)
                got += self.sector_size - tail
            elif tail:
                got -= tail
            if not got:
                t.ended = True
                return None
            slot.pos, slot.length = t.pos, got
            t.pos += got
            t.next_index += 1
            return t.next_index - 1

    def _worker(self, t: _Turns, read_into: ReadInto, write_at: WriteAt, limit: int | None, pad_last: bool,
                progress: Progress | None, total: int) -> None:
        slice_bytes = max(self.sector_size, SLICE - SLICE % self.sector_size)
        slot = _Slot(self.chunk, self.xts.scratch(slice_bytes) if self.xts else None)
        try:
            while (index := self._read(t, slot, read_into, limit, pad_last)) is not None:
                self._crypt(slot)
                with t.cond:
                    t.cond.wait_for(lambda: t.next_write == index or t.error is not None)
                    if t.error is not None:
                        return
                    write_at(slot.pos, memoryview(slot.outbuf)[:slot.length])
                    t.done = slot.pos + slot.length
                    t.next_write += 1
                    t.cond.notify_all()
                    if progress:
                        progress(t.done, total)
        except BaseException as exc:  # handed to the caller; the other workers stop at their next turn
            with t.cond:
                t.error = t.error or exc
                t.cond.notify_all()

    def run(self, read_into: ReadInto, write_at: WriteAt, *, limit: int | None = None,
            pad_last: bool = False, progress: Progress | None = None, total: int = 0) -> int:
        """Read → crypt → write until the source ends (or ``limit`` bytes); return bytes crypted.

        A source ending inside a sector is zero-padded with ``pad_last``, else the
        partial sector is dropped (a device whose size is not a whole number of sectors).
        """
        t = _Turns()
        args = (t, read_into, write_at, limit, pad_last, progress, total)
        threads = [threading.Thread(target=self._worker, args=args, name=f"hotluks-crypt-{i}", daemon=True)
                   for i in range(self.workers - 1)]
        for th in threads:
            th.start()
        self._worker(*args)  # the calling thread is a worker too
        for th in threads:
            th.join()
        if t.error is not None:
            raise t.error
        return t.done


def _fill(read_into: ReadInto, view: memoryview) -> int:
    """Read until ``view`` is full or the source ends (pipes return short reads)."""
    got = 0
    while got < len(view):
        n = read_into(view[got:])
        if not n:
            break
        got += n
    return got


def file_reader(fd: int, start: int) -> ReadInto:
    """Positional reads from ``fd`` starting at ``start`` (no shared file offset)."""
    where = [start]

    def read_into(view: memoryview) -> int:
        n = os.preadv(fd, [view], where[0])
        where[0] += n
        return n

    return read_into


def file_writer(fd: int, base: int) -> WriteAt:
    """Positional writes at ``base + pos`` into ``fd``."""

    def write_at(pos: int, view: memoryview) -> None:
        off = 0
        while off < len(view):
            off += os.pwrite(fd, view[off:], base + pos + off)

    return write_at


def stream_reader(src: IO[bytes]) -> ReadInto:
    """Reads from a file object (a pipe or stdin included), into the buffer when it can."""
    readinto = getattr(src, "readinto", None)
    if readinto is not None:
        return lambda view: readinto(view) or 0

    def read_into(view: memoryview) -> int:
        data = src.read(len(view))
        view[:len(data)] = data
        return len(data)

    return read_into


def stream_writer(out: IO[bytes]) -> WriteAt:
    """Sequential writes to a file object; a raw file's short writes are completed."""

    def write_at(_pos: int, view: memoryview) -> None:
        done = out.write(view) or 0
        while done < len(view):
            done += out.write(view[done:]) or 0

    return write_at
