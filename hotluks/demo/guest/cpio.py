"""A deterministic ``newc`` cpio archive writer for the initramfs (pure).

Entries are owned by root, dated 0, so the same inputs give the same bytes.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass

TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member: a directory, regular file, symlink or device node."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)

    @staticmethod
    def directory(path: str, perm: int = 0o755) -> Entry:
        return Entry(path, stat.S_IFDIR | perm)

    @staticmethod
    def file(path: str, data: bytes, perm: int = 0o644) -> Entry:
        return Entry(path, stat.S_IFREG | perm, data)

    @staticmethod
    def symlink(path: str, target: str) -> Entry:
        return Entry(path, stat.S_IFLNK | 0o777, target.encode())

    @staticmethod
    def chardev(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
        return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _pad4(n: int) -> bytes:
    return b"\0" * (-n % 4)


def _member(ino: int, entry: Entry) -> bytes:
    name = entry.path.lstrip("/").encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, 0, 0, nlink, 0, len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    out = header + name + _pad4(len(header) + len(name)) + entry.data + _pad4(len(entry.data))
    return out


def newc_archive(entries: Iterable[Entry]) -> bytes:
    """The archive bytes, members in the given order, then the trailer."""
    parts = [_member(ino, entry) for ino, entry in enumerate(entries, start=1)]
    parts.append(_member(0, Entry(TRAILER, 0)))
    return b"".join(parts)
