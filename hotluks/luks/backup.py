"""Header backup and restore (cryptsetup's luksHeaderBackup / luksHeaderRestore).

A backup holds the header and its keyslot areas exactly as on the device, sized
as cryptsetup sizes them (LUKS1: up to the end of the last keyslot area, page
aligned; LUKS2: both metadata copies plus the keyslots area), so either tool
restores the other's backups. Backup files are created 0600 and never
overwrite an existing file. A restore refuses a header that belongs to another
volume key (its fingerprint differs from the header on the device) unless forced.
"""

from __future__ import annotations

import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hotluks.errors import InputError, LuksError, LuksFormatError, RefusedError
from hotluks.luks.fingerprint import fingerprint
from hotluks.luks.metadata import Header
from hotluks.luks.volume import PathLike, open_header, parse_metadata

PAGE = 4096


def backup_size(header: Header) -> int:
    """How many bytes a backup of ``header`` holds (as cryptsetup writes)."""
    if header.version == 1:
        return -(-header.metadata_size // PAGE) * PAGE
    return header.metadata_size


def _read_head(path: PathLike, length: int) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(length)
    except OSError as exc:
        raise InputError(f"cannot read {os.fspath(path)}: {exc.strerror}") from None
    return data + bytes(length - len(data))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int, *, replace: bool, owner: tuple[int, int] | None = None) -> None:
    """Write ``data`` to a temporary file beside ``path``, fsync, then link (new) or rename (replace)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        if owner is not None and os.geteuid() == 0:
            os.fchown(fd, *owner)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if path appeared meanwhile: never overwrite
            os.unlink(tmp)
        _fsync_dir(path.parent)
    except FileExistsError:
        os.unlink(tmp)
        raise InputError(f"header backup file {path} already exists") from None
    except OSError as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise InputError(f"cannot write {path}: {exc.strerror}") from None


def header_backup(device: PathLike, backup_file: PathLike, *, header: PathLike | None = None) -> Header:
    """Save the (valid) header of ``device`` (or of the detached ``header``) to a new 0600 ``backup_file``."""
    meta = header if header is not None else device
    hdr = open_header(meta)
    out = Path(backup_file)
    if out.exists() or out.is_symlink():
        raise InputError(f"header backup file {out} already exists")
    _write_new(out, _read_head(meta, backup_size(hdr)), 0o600, replace=False)
    return hdr


def read_backup(backup_file: PathLike) -> tuple[Header, bytes]:
    """Parse a backup file: the header and the exact bytes to restore."""
    try:
        with open(backup_file, "rb") as f:
            data = f.read(2 * (4 << 20) + (128 << 20) + PAGE)  # the largest LUKS2 metadata + keyslots area
    except OSError as exc:
        raise InputError(f"cannot read header backup {os.fspath(backup_file)}: {exc.strerror}") from None
    try:
        hdr = parse_metadata(data)
    except LuksError as exc:
        raise LuksFormatError(f"{os.fspath(backup_file)} is not a valid LUKS header backup: {exc}") from None
    size = backup_size(hdr)
    if len(data) < hdr.metadata_size:
        raise LuksFormatError(f"{os.fspath(backup_file)} is truncated: the header needs {hdr.metadata_size} bytes")
    return hdr, data[:min(size, len(data))]


@dataclass(frozen=True)
class RestoreResult:
    """What a restore did: the fingerprint now on the device, and what was there before."""

    fingerprint: str
    previous: str | None  # fingerprint of the header that was replaced, None if there was no valid one
    atomic: bool  # True: the header file was replaced by rename; False: written in place


def header_restore(device: PathLike, backup_file: PathLike, *, header: PathLike | None = None,
                   force: bool = False) -> RestoreResult:
    """Write the header in ``backup_file`` onto ``device`` (or the detached ``header``).

    Refused (RefusedError) when the device holds a valid header of another volume key
    or data layout, unless ``force``. A regular header file that holds nothing but the
    header is replaced atomically (rename); a device or a file with data after the
    header is written in place.
    """
    hdr, data = read_backup(backup_file)
    new = fingerprint(hdr).value
    target = Path(os.path.realpath(header if header is not None else device))  # through symlinks
    previous: str | None = None
    try:
        previous = fingerprint(open_header(target)).value
    except (LuksError, InputError):
        previous = None  # nothing valid there: the recovery case
    if previous is not None and previous != new and not force:
        raise RefusedError(f"the header on {target} belongs to another volume key or layout (fingerprint "
                           f"sha256:{previous}, backup sha256:{new}); restoring would make its data unreadable. "
                           "Add --force to restore anyway")
    if hdr.payload_offset and len(data) > hdr.payload_offset:
        raise LuksFormatError(f"{os.fspath(backup_file)}: the backup is larger than its data offset")
    try:
        st = os.stat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise InputError(f"cannot stat {target}: {exc.strerror}") from None
    if st is None or (stat.S_ISREG(st.st_mode) and st.st_size <= len(data)):
        _write_new(target, data, stat.S_IMODE(st.st_mode) if st else 0o600, replace=True,
                   owner=(st.st_uid, st.st_gid) if st else None)
        return RestoreResult(new, previous, atomic=True)
    try:
        fd = os.open(target, os.O_WRONLY)
        try:
            done = 0
            while done < len(data):
                done += os.pwrite(fd, data[done:], done)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise InputError(f"cannot write {target}: {exc.strerror}") from None
    return RestoreResult(new, previous, atomic=False)
