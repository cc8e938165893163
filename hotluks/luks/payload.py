"""Payload streaming: decrypt / encrypt a volume's data segment, sector-exactly.

Reading, crypto and writing overlap: the calling thread reads and writes in
order while a small thread pool (one worker per core) runs the sector crypto,
which spends its time in ``cryptography``/Botan/numpy code that releases the GIL.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import IO

from hotluks.errors import InputError, LuksUnsupportedError, ReadOnlyHeaderError
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.metadata import Header, VolumeKey
from hotluks.luks.sectors import IV_UNIT, CipherSpec, crypt_sectors, parse_cipher

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int], None]
CHUNK = 512 << 10  # cache-sized chunks are fastest for the vectorised sector crypto
WORKERS = max(1, min(4, os.cpu_count() or 1))


def _open_header(device: PathLike, header: PathLike | None) -> Header:
    from hotluks.luks.volume import open_header

    return open_header(device, header=header)


def _open_read(path: PathLike) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open {os.fspath(path)}: {exc.strerror}") from None


def _pipelined(items: Iterator[tuple[int, bytes]], work: Callable[[int, bytes], bytes],
               consume: Callable[[bytes], None]) -> None:
    """``consume(work(*item))`` for every item, in order; up to 2 × WORKERS items in flight."""
    if WORKERS == 1:
        for item in items:
            consume(work(*item))
        return
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="hotluks-crypt") as pool:
        pending: deque[Future[bytes]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(work, *item))
                if len(pending) >= 2 * WORKERS:
                    consume(pending.popleft().result())
            while pending:
                consume(pending.popleft().result())
        finally:
            for future in pending:
                future.cancel()


def _crypt(spec: CipherSpec, key: bytes, hdr: Header, encrypt: bool) -> Callable[[int, bytes], bytes]:
    seg = hdr.data_segment

    def run(done: int, data: bytes) -> bytes:
        return bytes(crypt_sectors(spec, key, data, sector_size=seg.sector_size,
                                   first_iv=seg.iv_tweak + done // IV_UNIT, encrypt=encrypt))
    return run


def _payload_geometry(hdr: Header, device_size: int) -> tuple[int, int]:
    seg = hdr.data_segment
    end = device_size if seg.size is None else min(device_size, seg.offset + seg.size)
    length = max(0, end - seg.offset)
    return seg.offset, length - length % seg.sector_size


def _key_for(hdr: Header, secret: bytes | VolumeKey) -> bytes:
    if hdr.read_only:
        raise ReadOnlyHeaderError(
            f"header has unknown mandatory requirements ({', '.join(hdr.requirements)}): not activated")
    seg = hdr.data_segment
    if seg.integrity:
        raise LuksUnsupportedError(f"authenticated encryption (integrity {seg.integrity}) is not supported")
    if seg.type != "crypt":
        raise LuksUnsupportedError(f"data segment type {seg.type!r} is not supported")
    if isinstance(secret, VolumeKey):
        return secret.key
    return unlock_header(hdr, secret).key


def decrypt_payload(device: PathLike, out: IO[bytes], secret: bytes | VolumeKey, *, header: PathLike | None = None,
                    progress: Progress | None = None, chunk: int = CHUNK) -> int:
    """Stream the decrypted data segment of ``device`` into ``out``; return bytes written.

    ``secret`` is a passphrase or an unlocked :class:`VolumeKey`.
    """
    hdr = _open_header(device, header)
    key = _key_for(hdr, secret)
    parse_cipher(hdr.cipher).check_key_size(len(key))
    try:
        return _decrypt_stream(device, out, key, hdr, progress, chunk)
    except BrokenPipeError:
        raise  # the reader went away: the CLI stops quietly
    except OSError as exc:
        raise InputError(f"I/O error while decrypting {os.fspath(device)}: {exc.strerror or exc}") from None


def _decrypt_stream(device: PathLike, out: IO[bytes], key: bytes, hdr: Header, progress: Progress | None,
                    chunk: int) -> int:
    seg = hdr.data_segment
    chunk -= chunk % seg.sector_size
    done = {"bytes": 0}
    with _open_read(device) as f:
        f.seek(0, os.SEEK_END)
        offset, length = _payload_geometry(hdr, f.tell())
        f.seek(offset)

        def reads() -> Iterator[tuple[int, bytes]]:
            pos = 0
            while pos < length:
                data = f.read(min(chunk, length - pos))
                data = data[:len(data) - len(data) % seg.sector_size]
                if not data:
                    return
                yield pos, data
                pos += len(data)

        def write(plain: bytes) -> None:
            out.write(plain)
            done["bytes"] += len(plain)
            if progress:
                progress(done["bytes"], length)

        _pipelined(reads(), _crypt(parse_cipher(hdr.cipher), key, hdr, False), write)
    return done["bytes"]


def encrypt_payload(src: IO[bytes], device: PathLike, secret: bytes | VolumeKey, *, header: PathLike | None = None,
                    progress: Progress | None = None, total: int = 0, chunk: int = CHUNK) -> int:
    """Encrypt ``src`` into the data segment of ``device`` from its start; return bytes written.

    A short last sector is zero-padded. Regular files grow as needed; the data
    must fit a fixed-size segment.
    """
    hdr = _open_header(device, header)
    key = _key_for(hdr, secret)
    parse_cipher(hdr.cipher).check_key_size(len(key))
    try:
        return _encrypt_stream(src, device, key, hdr, progress, total, chunk)
    except OSError as exc:
        raise InputError(f"I/O error while encrypting into {os.fspath(device)}: {exc.strerror or exc}") from None


def _encrypt_stream(src: IO[bytes], device: PathLike, key: bytes, hdr: Header, progress: Progress | None,
                    total: int, chunk: int) -> int:
    seg = hdr.data_segment
    chunk -= chunk % seg.sector_size
    done = {"bytes": 0}
    with open(device, "r+b") as f:
        f.seek(seg.offset)

        def reads() -> Iterator[tuple[int, bytes]]:
            pos = 0
            while True:
                data = src.read(chunk)
                if not data:
                    return
                while len(data) < chunk:
                    more = src.read(chunk - len(data))
                    if not more:
                        break
                    data += more
                if len(data) % seg.sector_size:
                    data += bytes(seg.sector_size - len(data) % seg.sector_size)
                if seg.size is not None and pos + len(data) > seg.size:
                    raise InputError("the input is larger than the LUKS data segment")
                yield pos, data
                pos += len(data)

        def write(cipher: bytes) -> None:
            f.write(cipher)
            done["bytes"] += len(cipher)
            if progress:
                progress(done["bytes"], total)

        _pipelined(reads(), _crypt(parse_cipher(hdr.cipher), key, hdr, True), write)
        f.flush()
        os.fsync(f.fileno())
    return done["bytes"]
