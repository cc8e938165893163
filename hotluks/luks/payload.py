"""Payload streaming: decrypt / encrypt a volume's data segment, sector-exactly.

Reading, crypto and writing overlap on every core (:mod:`hotluks.luks.pipeline`): each
worker reads, crypts and writes its own cache-sized chunk in turn, in ``cryptography``/
Botan/numpy code that releases the GIL; memory stays bounded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import IO

from hotluks.errors import InputError, LuksUnsupportedError, ReadOnlyHeaderError
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.metadata import Header, VolumeKey
from hotluks.luks.sectors import parse_cipher

PathLike = str | os.PathLike[str]
Progress = Callable[[int, int], None]
CHUNK = 512 << 10  # cache-sized chunks are fastest for the vectorised sector crypto


def _open_header(device: PathLike, header: PathLike | None) -> Header:
    from hotluks.luks.volume import open_header

    return open_header(device, header=header)


def _open_read(path: PathLike) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open {os.fspath(path)}: {exc.strerror}") from None


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
    from hotluks.luks import pipeline

    seg = hdr.data_segment
    with _open_read(device) as f:
        offset, length = _payload_geometry(hdr, os.fstat(f.fileno()).st_size or f.seek(0, os.SEEK_END))
        run = pipeline.SectorPipeline(parse_cipher(hdr.cipher), key, sector_size=seg.sector_size,
                                      iv_base=seg.iv_tweak, encrypt=False, chunk=chunk)
        return run.run(pipeline.file_reader(f.fileno(), offset), pipeline.stream_writer(out),
                       limit=length, progress=progress, total=length)


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
    from hotluks.luks import pipeline

    seg = hdr.data_segment
    limit = None if seg.size is None else seg.size + 1  # one byte more: an oversized input is detected
    run = pipeline.SectorPipeline(parse_cipher(hdr.cipher), key, sector_size=seg.sector_size,
                                  iv_base=seg.iv_tweak, encrypt=True, chunk=chunk)
    with open(device, "r+b") as f:
        write = pipeline.file_writer(f.fileno(), seg.offset)

        def write_at(pos: int, view: memoryview) -> None:
            if seg.size is not None and pos + len(view) > seg.size:
                raise InputError("the input is larger than the LUKS data segment")
            write(pos, view)

        done = run.run(pipeline.stream_reader(src), write_at, limit=limit, pad_last=True, progress=progress,
                       total=total)
        os.fsync(f.fileno())
    return done
