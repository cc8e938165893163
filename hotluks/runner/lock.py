"""Per-VM lock shared by hotluks processes (flock) and by tasks of one process."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

from hotluks.errors import LockedError

_local_locks: dict[str, asyncio.Lock] = {}


@contextlib.asynccontextmanager
async def vm_lock(lock_dir: Path, timeout: float = 60.0) -> AsyncIterator[None]:
    """Hold ``lock_dir/lock`` exclusively; wait up to ``timeout`` seconds for it.

    A SIGKILLed holder releases the lock with its file descriptor, so ``repair``
    can always take over.
    """
    lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = lock_dir / "lock"
    local = _local_locks.setdefault(f"{id(asyncio.get_running_loop())}:{path}", asyncio.Lock())
    deadline = time.monotonic() + timeout
    try:
        async with asyncio.timeout(timeout):
            await local.acquire()
    except TimeoutError:
        raise LockedError(f"another operation on this VM is still running (waited {timeout:.0f}s)") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise LockedError(f"another hotluks process holds {path} (waited {timeout:.0f}s)") from None
                    await asyncio.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    finally:
        local.release()


def held_elsewhere(lock_dir: Path) -> bool:
    """Whether another process holds the VM lock now (an operation is in progress). Never waits."""
    try:
        fd = os.open(lock_dir / "lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
