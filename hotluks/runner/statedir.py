"""Trusting the state directory, and creating files in it without following links.

The journal decides what root's ``repair``/``detach`` will do, so the directory that
holds it must be writable by nobody but the user hotluks runs as (the rule OpenSSH
applies to key files). A directory is trusted when it and every parent are owned by
root or by the invoking user and are not group- or world-writable. One relaxation,
for parents only: a root-owned directory with the sticky bit (``/tmp``) may be
world-writable, since nobody else can rename or remove what hotluks creates in it.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from hotluks.errors import HotluksError


class UntrustedStateDirError(HotluksError):
    """The state directory (or a parent) could be written by someone else: refused."""


class StateDirError(HotluksError):
    """The state directory cannot be created or used."""


def _owner_ok(st: os.stat_result, uid: int) -> bool:
    return st.st_uid in (0, uid)


def untrusted_reason(path: Path, uid: int | None = None, *, strict: int = 1) -> str | None:
    """Why ``path`` (an existing directory) is not trusted, or ``None`` when it is.

    ``strict``: how many levels, ``path`` first, get no sticky-bit relaxation (2: ``path`` and
    its parent, e.g. a VM's journal directory and the state directory, both hotluks' own).
    """
    uid = os.geteuid() if uid is None else uid
    current = os.path.abspath(path)  # plain strings: this runs under the lock of every operation
    while True:
        try:
            st = os.lstat(current)
        except OSError as exc:
            return f"cannot inspect {current}: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return f"{current} is a symbolic link"
        if not stat.S_ISDIR(st.st_mode):
            return f"{current} is not a directory"
        if not _owner_ok(st, uid):
            return f"{current} is owned by uid {st.st_uid} (must be root or uid {uid})"
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        sticky_root = bool(st.st_mode & stat.S_ISVTX) and st.st_uid == 0
        if writable and (strict > 0 or not sticky_root):
            return f"{current} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
        parent = os.path.dirname(current)
        if parent == current:
            return None
        current = parent
        strict -= 1


def ensure_trusted_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if needed, then refuse it unless it is trusted."""
    try:
        os.makedirs(Path(os.path.abspath(path)).parent, mode=0o700, exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        if not os.path.isdir(path):
            raise StateDirError(f"cannot create state directory {path}: it exists and is not a directory "
                                "(use --state-dir or HOTLUKS_STATE_DIR)") from None
    except OSError as exc:
        raise StateDirError(f"cannot create state directory {path}: {exc.strerror} "
                            "(use --state-dir or HOTLUKS_STATE_DIR)") from None
    reason = untrusted_reason(path)
    if reason is not None:
        raise UntrustedStateDirError(f"refusing state directory {path}: {reason}; hotluks keeps the records that "
                                     "decide what repair and detach send to the VM there, so nobody else may "
                                     "write it")


def write_new(directory: Path, final: Path, data: bytes, *, sync: bool = False) -> None:
    """Atomically replace ``final`` with ``data``: a fresh 0600 temporary (O_EXCL|O_NOFOLLOW,
    unpredictable name) in ``directory``, renamed over ``final``."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{final.name}.", suffix=".tmp")
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of ``path`` (``None`` if absent); ``ValueError`` unless it is a regular file of ours
    of at most ``limit`` bytes (a link is never followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symbolic link where a record belongs
        raise ValueError(f"cannot be opened safely ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ValueError(f"owned by uid {st.st_uid}")
        if st.st_size > limit:
            raise ValueError(f"larger than {limit} bytes")
        return os.read(fd, limit + 1)
    finally:
        os.close(fd)
