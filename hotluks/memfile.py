"""Secrets handed to a child process (``rbd``, ``qemu-img``, ``virsh``) as memory-only files.

The child is given ``/dev/fd/N`` on its command line and the descriptor in ``pass_fds``. The
file is made with ``memfd_create``: it never touches a disk and is gone with its last
descriptor, also when this process or the child is killed, so no key is left in /tmp.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def memory_file(data: bytes, name: str = "hotluks-secret") -> Iterator[tuple[str, int]]:
    """``(path, fd)`` of a 0600 memory-only file holding ``data``; closed on exit."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)  # pass_fds makes it inheritable in the child only
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
        yield f"/dev/fd/{fd}", fd
    finally:
        os.close(fd)
