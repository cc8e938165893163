"""The imperative shell of the engine: read/write headers and payloads on files or block devices."""

from __future__ import annotations

import dataclasses
import os
import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from hotluks.errors import InputError, LuksFormatError, LuksUnsupportedError, ReadOnlyHeaderError
from hotluks.luks import create, luks1, luks2
from hotluks.luks.kdf import KdfParams, pbkdf2
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.metadata import Header, VolumeKey
from hotluks.luks.sectors import parse_cipher

PathLike = str | os.PathLike[str]
Source = PathLike | bytes
Progress = Callable[[int, int], None]
CHUNK = 512 << 10  # cache-sized chunks are fastest for the vectorised sector crypto
_FIRST_READ = 2 * luks2.HDR_SIZES[-1] + 4096


def _size_of(f: IO[bytes]) -> int:
    return f.seek(0, os.SEEK_END)


def _read_at(f: IO[bytes], offset: int, length: int) -> bytes:
    f.seek(offset)
    return f.read(length)


def _open_read(path: PathLike) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"cannot open {os.fspath(path)}: {exc.strerror}") from None


def parse_metadata(data: bytes, device_size: int | None = None) -> Header:
    """Parse a LUKS1 or LUKS2 header from bytes (keyslot areas included when present).

    Like cryptsetup, the version is taken from the signature at offset 0; a LUKS2
    primary copy that is damaged (checksum, JSON) falls back to the secondary.
    """
    if len(data) < 8 or data[:6] not in (luks1.MAGIC, luks2.MAGIC2):
        raise LuksFormatError("not a LUKS device (no LUKS signature)")
    version = int.from_bytes(data[6:8], "big")
    if version == 1 and data[:6] == luks1.MAGIC:
        return luks1.parse(data, device_size)
    if version == 2:
        return luks2.parse(data)
    raise LuksFormatError(f"unsupported LUKS version {version}")


def read_header_file(path: PathLike) -> Header:
    """Read and parse the header at the start of a file or block device."""
    with _open_read(path) as f:
        size = _size_of(f)
        data = _read_at(f, 0, min(size, _FIRST_READ))
        if data[:6] == luks1.MAGIC and data[6:8] == b"\0\x01" and len(data) >= luks1.PHDR_SIZE:
            slots = luks1.raw_slots(data)
            key_bytes = int.from_bytes(data[108:112], "big")
            need = luks1.device_sectors(key_bytes, slots) * luks1.SECTOR
            if need > len(data) and need <= size:
                data = _read_at(f, 0, need)
            return luks1.parse(data, size)
        header = parse_metadata(data, size)
        if header.metadata_size > len(header.metadata):
            if header.metadata_size > size:
                raise LuksFormatError("device is smaller than its LUKS2 keyslots area")
            header = dataclasses.replace(header, metadata=_read_at(f, 0, header.metadata_size))
        return header


def open_header(source: Source, *, header: Source | None = None) -> Header:
    """Parse and validate the LUKS header of ``source`` (or of the detached ``header``)."""
    meta = header if header is not None else source
    if isinstance(meta, bytes):
        return parse_metadata(meta)
    return read_header_file(meta)


def unlock(target: Header | Source, passphrase: bytes, *, header: Source | None = None,
           keyslot: int | None = None) -> VolumeKey:
    """Return the volume key; WrongPassphraseError / LuksFormatError / LuksUnsupportedError."""
    hdr = target if isinstance(target, Header) else open_header(target, header=header)
    return unlock_header(hdr, passphrase, keyslot)


def verify_passphrase(path: Source, passphrase: bytes, *, header_path: Source | None = None) -> None:
    """Raise unless ``passphrase`` opens a keyslot of the volume."""
    unlock(path, passphrase, header=header_path)


def benchmark_pbkdf2(hash_name: str, iter_time_ms: int, key_bytes: int) -> int:
    """PBKDF2 iterations that take about ``iter_time_ms`` here (at least 1000)."""
    probe = 20000
    start = time.perf_counter()
    pbkdf2(hash_name, b"benchmark", bytes(32), probe, key_bytes)
    elapsed = max(time.perf_counter() - start, 1e-6)
    return max(1000, int(probe * iter_time_ms / 1000 / elapsed))


def benchmark_argon2(kind: str, memory_kib: int, cpus: int, iter_time_ms: int) -> int:
    """Argon2 time cost that takes about ``iter_time_ms`` here (at least 4, as cryptsetup)."""
    from hotluks.luks.kdf import argon2

    start = time.perf_counter()
    argon2(kind, b"benchmark", bytes(32), time=1, memory_kib=memory_kib, cpus=cpus, length=32)
    elapsed = max(time.perf_counter() - start, 1e-6)
    return max(4, int(iter_time_ms / 1000 / elapsed))


def make_kdf(pbkdf: str, *, hash_name: str = "sha256", iterations: int | None = None,
             iter_time_ms: int | None = None, memory_kib: int | None = None, parallel: int | None = None,
             key_bytes: int = 64) -> KdfParams:
    """KDF parameters for a new keyslot (PBKDF2 iterations benchmarked unless forced)."""
    salt = os.urandom(32)
    if pbkdf == "pbkdf2":
        iters = iterations or benchmark_pbkdf2(hash_name, iter_time_ms or 2000, key_bytes)
        return KdfParams("pbkdf2", salt, hash=hash_name, iterations=iters)
    if pbkdf in ("argon2i", "argon2id"):
        memory = memory_kib or 65536
        cpus = parallel or min(4, os.cpu_count() or 1)
        cost = iterations or (benchmark_argon2(pbkdf, memory, cpus, iter_time_ms) if iter_time_ms else 4)
        return KdfParams(pbkdf, salt, time=cost, memory=memory, cpus=cpus)
    raise InputError(f"unknown PBKDF {pbkdf!r} (pbkdf2, argon2i, argon2id)")


def _write_all(path: PathLike, writes: list[create.Write], *, create_file: bool = False) -> None:
    mode = "wb" if create_file else "r+b"
    try:
        with open(path, mode) as f:
            for w in writes:
                f.seek(w.offset)
                f.write(w.data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise InputError(f"cannot write {os.fspath(path)}: {exc.strerror}") from None


def format_volume(device: PathLike, passphrase: bytes, *, type: str = "luks2", header: PathLike | None = None,
                  cipher: str = "aes-xts-plain64", key_size: int = 512, hash: str = "sha256",
                  kdf: KdfParams | None = None, sector_size: int = 512, volume_key: bytes | None = None,
                  uuid: str | None = None, digest_iterations: int = 1000) -> VolumeKey:
    """Write a new LUKS header; with ``header`` it is detached (payload offset 0) and ``device`` is untouched."""
    if key_size % 8:
        raise InputError("key size must be a multiple of 8 bits")
    key = volume_key if volume_key is not None else os.urandom(key_size // 8)
    uid = uuid or str(uuidlib.uuid4())
    kdf = kdf or make_kdf("pbkdf2" if type == "luks1" else "argon2id", hash_name=hash, key_bytes=len(key))
    detached = header is not None
    if type == "luks1":
        if kdf.type != "pbkdf2":
            raise InputError("LUKS1 keyslots use pbkdf2 only")
        if sector_size != 512:
            raise InputError("LUKS1 supports 512-byte sectors only")
        meta = create.build_luks1(key, passphrase, cipher=cipher, hash_name=hash, kdf_iterations=kdf.iterations,
                                  digest_iterations=digest_iterations, uuid=uid, detached=detached, rand=os.urandom)
    elif type == "luks2":
        meta = create.build_luks2(key, passphrase, cipher=cipher, kdf=kdf, digest_hash=hash,
                                  digest_iterations=digest_iterations, uuid=uid, detached=detached,
                                  sector_size=sector_size, rand=os.urandom)
    else:
        raise InputError(f"unknown LUKS type {type!r} (luks1, luks2)")
    target = header if header is not None else device
    if header is None:
        try:
            size = os.stat(device).st_size if Path(device).is_file() else None
        except OSError as exc:
            raise InputError(f"cannot open {os.fspath(device)}: {exc.strerror}") from None
        if size is not None and size < len(meta.blob):
            raise InputError(f"{os.fspath(device)} is smaller than the {len(meta.blob)}-byte LUKS header")
    _write_all(target, [create.Write(0, meta.blob)], create_file=header is not None)
    written = open_header(device, header=header)
    return unlock_header(written, passphrase)


def format_luks1(device: PathLike, passphrase: bytes, **kwargs: object) -> VolumeKey:
    """LUKS1 variant of :func:`format_volume`."""
    return format_volume(device, passphrase, type="luks1", **kwargs)  # type: ignore[arg-type]


def format_luks2(device: PathLike, passphrase: bytes, **kwargs: object) -> VolumeKey:
    """LUKS2 variant of :func:`format_volume`."""
    return format_volume(device, passphrase, type="luks2", **kwargs)  # type: ignore[arg-type]


def add_key(device: PathLike, passphrase: bytes, new_passphrase: bytes, *, header: PathLike | None = None,
            kdf: KdfParams | None = None, keyslot: int | None = None) -> int:
    """Add a keyslot opened by ``new_passphrase``; return its number."""
    hdr = open_header(device, header=header)
    create.ensure_writable(hdr)
    vk = unlock_header(hdr, passphrase)
    kdf = kdf or make_kdf("pbkdf2" if hdr.version == 1 else "argon2id", hash_name=hdr.hash or "sha256",
                          key_bytes=len(vk.key))
    index, writes = create.add_keyslot(hdr, vk.key, new_passphrase, kdf, os.urandom, keyslot)
    _write_all(header if header is not None else device, writes)
    return index


def remove_key(device: PathLike, passphrase: bytes, *, header: PathLike | None = None) -> int:
    """Disable the keyslot that ``passphrase`` opens and wipe its material; return its number."""
    hdr = open_header(device, header=header)
    create.ensure_writable(hdr)
    vk = unlock_header(hdr, passphrase)
    writes = create.remove_keyslot(hdr, vk.keyslot, os.urandom)
    _write_all(header if header is not None else device, writes)
    return vk.keyslot


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
    hdr = open_header(device, header=header)
    key = _key_for(hdr, secret)
    parse_cipher(hdr.cipher).check_key_size(len(key))
    try:
        return _decrypt_stream(device, out, key, hdr, progress, chunk)
    except BrokenPipeError:  # the reader went away (``decrypt - | head``): not an I/O error of ours
        raise
    except OSError as exc:
        raise InputError(f"I/O error while decrypting {os.fspath(device)}: {exc.strerror or exc}") from None


def _decrypt_stream(device: PathLike, out: IO[bytes], key: bytes, hdr: Header, progress: Progress | None,
                    chunk: int) -> int:
    from hotluks.luks import pipeline

    seg = hdr.data_segment
    with _open_read(device) as f:
        offset, length = _payload_geometry(hdr, _size_of(f))
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
    hdr = open_header(device, header=header)
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
