"""The imperative shell of the engine: read/write headers and payloads on files or block devices."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import tempfile
import time
import uuid as uuidlib
from pathlib import Path
from typing import IO

from hotluks.errors import InputError, LuksFormatError
from hotluks.luks import create, luks1, luks2
from hotluks.luks.kdf import KdfParams, pbkdf2
from hotluks.luks.keyslots import unlock_header
from hotluks.luks.metadata import Header, Reader, VolumeKey
from hotluks.luks.payload import CHUNK, decrypt_payload, encrypt_payload

PathLike = str | os.PathLike[str]
Source = PathLike | bytes
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
    primary copy that is damaged (checksum, JSON) or wiped falls back to the secondary.
    """
    if len(data) >= 8 and data[:6] == luks1.MAGIC and data[6:8] == b"\0\x01":
        return luks1.parse(data, device_size)
    if luks2.is_luks2(data):
        return luks2.parse(data)
    if len(data) >= 8 and data[:6] in (luks1.MAGIC, luks2.MAGIC2):
        raise LuksFormatError(f"unsupported LUKS version {int.from_bytes(data[6:8], 'big')}")
    raise LuksFormatError("not a LUKS device (no LUKS signature)")


def _file_reader(path: PathLike) -> Reader:
    def read(offset: int, length: int) -> bytes:
        with _open_read(path) as f:
            return _read_at(f, offset, length)
    return read


def read_header_file(path: PathLike) -> Header:
    """Read and parse the header at the start of a file or block device.

    Only the binary headers and JSON areas are read up front (at most 8 MiB);
    keyslot material is read when a keyslot is opened.
    """
    with _open_read(path) as f:
        size = _size_of(f)
        data = _read_at(f, 0, min(size, _FIRST_READ))
    header = parse_metadata(data, size)
    if header.version == 2 and header.metadata_size > size:
        raise LuksFormatError("device is smaller than its LUKS2 metadata and keyslots area")
    return dataclasses.replace(header, device_size=size, reader=_file_reader(path))


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


#: header files up to this size are rewritten atomically (copy, fsync, rename); larger targets in place
ATOMIC_MAX_BYTES = 256 << 20


def _is_regular(path: PathLike) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise InputError(f"cannot open {os.fspath(path)}: {exc.strerror}") from None


def _replace_file(path: PathLike, content: bytes) -> None:
    """Write ``content`` as ``path``: a 0600 temporary file in the same directory, fsync, rename, fsync the dir."""
    target = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_metadata(path: PathLike, writes: list[create.Write], *, header_file: bool, new: bool = False) -> None:
    """Apply ``writes`` to a metadata device safely.

    A detached header that is a regular file (``header_file``) is rewritten as a
    whole: new 0600 file, fsync, atomic rename — a crash leaves the old or the
    new header, never a mix. Anything else (a block device, a volume with its
    header inside) is written in place, each write made durable before the next
    (the order of ``writes`` is crash-safe: see :mod:`hotluks.luks.create`).
    """
    try:
        exists = os.path.exists(path)
        if header_file and _is_regular(path) and (new or not exists or os.path.getsize(path) <= ATOMIC_MAX_BYTES):
            buf = bytearray() if new or not exists else bytearray(Path(path).read_bytes())
            for w in writes:
                if len(buf) < w.offset + len(w.data):
                    buf.extend(bytes(w.offset + len(w.data) - len(buf)))
                buf[w.offset:w.offset + len(w.data)] = w.data
            _replace_file(path, bytes(buf))
            return
        with open(path, "r+b") as f:
            for w in writes:
                f.seek(w.offset)
                f.write(w.data)
                f.flush()
                os.fsync(f.fileno())
    except OSError as exc:
        raise InputError(f"cannot write {os.fspath(path)}: {exc.strerror or exc}") from None


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
    write_metadata(target, [create.Write(0, meta.blob)], header_file=header is not None, new=True)
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
    write_metadata(header if header is not None else device, writes, header_file=header is not None)
    return index


def remove_key(device: PathLike, passphrase: bytes, *, header: PathLike | None = None) -> int:
    """Disable the keyslot that ``passphrase`` opens and wipe its material; return its number."""
    hdr = open_header(device, header=header)
    create.ensure_writable(hdr)
    vk = unlock_header(hdr, passphrase)
    writes = create.remove_keyslot(hdr, vk.keyslot, os.urandom)
    write_metadata(header if header is not None else device, writes, header_file=header is not None)
    return vk.keyslot


__all__ = ["CHUNK", "add_key", "decrypt_payload", "encrypt_payload", "format_luks1", "format_luks2", "format_volume",
           "make_kdf", "open_header", "read_header_file", "remove_key", "unlock", "verify_passphrase",
           "write_metadata"]
