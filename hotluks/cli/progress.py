"""A one-line progress bar on stderr for long LUKS payload runs (decrypt, encrypt)."""

from __future__ import annotations

import sys
import time
from typing import IO

PROGRESS_MIN_BYTES = 64 << 20


class ProgressBar:
    """A one-line progress bar on stderr for long runs: on a terminal (or ``force``), never ``quiet``.

    A run is long when its known size is at least PROGRESS_MIN_BYTES or, size unknown
    (stdin, a block device), once that much is done or a second has passed.
    """

    def __init__(self, total: int, stream: IO[str] | None = None, *, force: bool = False,
                 quiet: bool = False) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = not quiet and (force or self.stream.isatty())
        self.force = force
        self.start = time.monotonic()
        self.last = 0.0
        self.drawn = False

    def _long(self, done: int, total: int, now: float) -> bool:
        if self.force or self.drawn:
            return True
        if total:
            return total >= PROGRESS_MIN_BYTES
        return done >= PROGRESS_MIN_BYTES or now - self.start >= 1.0

    def __call__(self, done: int, total: int) -> None:
        total = total or self.total
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.2 and done < total) or not self._long(done, total, now):
            return
        self.drawn = True
        self.last = now
        rate = done / max(now - self.start, 1e-6) / (1 << 20)
        if total:
            frac = min(done / total, 1.0)
            bar = "#" * int(frac * 30)
            self.stream.write(f"\r[{bar:<30}] {frac * 100:5.1f}% {done >> 20}/{total >> 20} MiB {rate:6.0f} MiB/s")
        else:
            self.stream.write(f"\r{done >> 20} MiB {rate:6.0f} MiB/s")
        self.stream.flush()

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
