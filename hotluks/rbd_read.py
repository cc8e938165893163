"""Read the first bytes of an RBD image (e.g. a LUKS header) without exporting it whole.

Streams ``rbd export IMAGE -`` and ends that process (by its PID) once enough
bytes arrived. A cephx key is handed to ``rbd`` as ``--keyfile /dev/fd/N``, a
memory-only file (``memfd_create``) that never touches a disk and is gone with its
last descriptor, also when this process is killed; never through argv. rbd's
stderr goes to an anonymous temporary file. The bytes are read raw, as stored:
for a librbd-encrypted image that is librbd's own LUKS header.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from hotluks.errors import PreflightError
from hotluks.memfile import memory_file

if TYPE_CHECKING:
    from hotluks.model import Source

RBD_BINARY = "rbd"


class RbdReadError(PreflightError):
    """The RBD image could not be read (cluster unreachable, no such image, auth)."""


@dataclass(frozen=True)
class RbdLocation:
    """Everything ``rbd`` needs to find one image."""

    pool: str
    image: str
    namespace: str | None = None
    snapshot: str | None = None
    conf: str | None = None
    mon_hosts: tuple[str, ...] = ()
    user: str | None = None

    @property
    def spec(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        snap = f"@{self.snapshot}" if self.snapshot else ""
        return f"{self.pool}/{ns}{self.image}{snap}"

    def describe(self) -> str:
        return f"rbd {self.spec}"


def location_of(source: Source) -> RbdLocation:
    """The :class:`RbdLocation` of a parsed rbd ``<source>`` (pure)."""
    pool, namespace, image = source.rbd_location()
    snapshot = source.rbd_snapshot
    hosts = tuple(mon_host(h.name, h.port) for h in source.hosts if h.name)
    return RbdLocation(pool=pool, image=image, namespace=namespace, snapshot=snapshot or None,
                       conf=source.config_file, mon_hosts=hosts,
                       user=source.auth.username if source.auth else None)


def mon_host(name: str, port: int | None) -> str:
    """One ``mon_host`` entry as QEMU builds it (IPv6 literals bracketed)."""
    host = f"[{name}]" if ":" in name and not name.startswith("[") else name
    return f"{host}:{port}" if port else host


def export_command(loc: RbdLocation, keyfile: str | None = None, mount_timeout: int = 15) -> list[str]:
    """The argv that streams the raw image to stdout (pure; holds no secret)."""
    args = [RBD_BINARY]
    if loc.conf:
        args += ["-c", loc.conf]
    elif loc.mon_hosts:
        args += ["-c", os.devnull]  # like QEMU with explicit hosts: no ambient ceph.conf needed
    if loc.mon_hosts:
        args += ["-m", ",".join(loc.mon_hosts)]
    if loc.user:
        args += ["--id", loc.user]
    if keyfile:
        args += ["--keyfile", keyfile]
    args += ["--client_mount_timeout", str(mount_timeout), "export", "--no-progress", loc.spec, "-"]
    return args


def read_image_head(loc: RbdLocation, length: int, *, key: bytes | None = None, timeout: float = 60.0) -> bytes:
    """The first ``length`` bytes of the image (fewer if the image is smaller).

    ``key`` is the cephx key as base64 text (as in a keyring; base64-encode a
    libvirt ceph secret's raw value first). Raises :class:`RbdReadError`.
    """
    mount_timeout = max(1, min(15, int(timeout)))
    with contextlib.ExitStack() as stack:
        keyfile, key_fd = stack.enter_context(memory_file(key, "hotluks-cephx-key")) if key is not None else (None, None)
        err = stack.enter_context(tempfile.TemporaryFile(prefix="hotluks-rbdread-"))
        return _stream_head(export_command(loc, keyfile, mount_timeout=mount_timeout), length, err, loc, timeout,
                            () if key_fd is None else (key_fd,))


def read_rbd_head(source: Source, length: int, *, key: bytes | None = None, timeout: float = 60.0) -> bytes:
    """:func:`read_image_head` for a parsed rbd ``<source>``."""
    return read_image_head(location_of(source), length, key=key, timeout=timeout)


def _stream_head(args: Sequence[str], length: int, err: IO[bytes], loc: RbdLocation, timeout: float,
                 pass_fds: tuple[int, ...]) -> bytes:
    chunks: list[bytes] = []
    got = 0
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                pass_fds=pass_fds)
    except FileNotFoundError:
        raise RbdReadError(f"cannot read {loc.describe()}: the '{RBD_BINARY}' tool is not installed "
                           "(Debian package ceph-common)") from None
    stdout = proc.stdout
    assert isinstance(stdout, io.BufferedReader)
    eof = False
    try:
        while got < length:
            if time.monotonic() > deadline:
                raise RbdReadError(f"reading {loc.describe()} timed out after {timeout:.0f}s")
            chunk = stdout.read1(min(1 << 20, length - got))
            if not chunk:
                eof = True
                break
            chunks.append(chunk)
            got += len(chunk)
    finally:
        if eof:  # the image ended: let rbd finish and report its own status
            try:
                proc.wait(max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            proc.kill()  # by PID: we have what we need (or gave up)
        stdout.close()
        status = proc.wait()
    if got < length and status != 0:
        err.seek(0)
        detail = _last_error(err.read().decode(errors="replace"))
        raise RbdReadError(f"cannot read {loc.describe()}: {detail or f'rbd exited with status {status}'}")
    return b"".join(chunks)[:length]


def _last_error(stderr: str) -> str:
    """The most useful line of rbd's stderr (its own ``rbd: …`` lines, else the last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    own = [line for line in lines if line.startswith("rbd:")]
    return "; ".join(own[-2:]) if own else (lines[-1] if lines else "")
