"""Hand QEMU open file descriptors instead of paths (libvirt and virsh backends).

Under libvirt, QEMU runs as ``libvirt-qemu`` in a private ``/dev`` mount namespace
(and often under AppArmor/SELinux) and libvirt only labels the disks it knows
about, so a path sent through the monitor is usually not openable by QEMU.
hotluks opens each file/block device itself, passes the descriptor with
``add-fd`` (its fdset tagged ``hotluks:<node-name>``) and gives the node
``/dev/fdset/N``. Fdsets are found again by that tag, so rollback, detach and
repair remove them without journaling their numbers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from hotluks.backends.base import MonitorBackend, QMPCommandError

FD_DRIVERS = ("file", "host_device")
TAG = "hotluks:"


def wants_fd(backend: MonitorBackend, arguments: Mapping[str, Any]) -> bool:
    """True for a file/block protocol node sent through a backend that passes descriptors."""
    return (getattr(backend, "passes_fds", False) and arguments.get("driver") in FD_DRIVERS
            and not str(arguments.get("filename", "")).startswith("/dev/fdset/"))


def open_flags(arguments: Mapping[str, Any]) -> int:
    """The flags QEMU would open the node with (its fdset lookup matches access mode and O_DIRECT)."""
    flags = os.O_RDONLY if arguments.get("read-only") else os.O_RDWR
    cache = arguments.get("cache")
    if isinstance(cache, Mapping) and cache.get("direct"):
        flags |= os.O_DIRECT
    return flags | os.O_CLOEXEC


def tag(node: str) -> str:
    return f"{TAG}{node}"


async def pass_file(backend: MonitorBackend, arguments: dict[str, Any]) -> dict[str, Any]:
    """Open the node's file, ``add-fd`` it, and return the arguments with ``/dev/fdset/N``."""
    path = str(arguments["filename"])
    node = str(arguments["node-name"])
    try:
        fd = os.open(path, open_flags(arguments))
    except OSError as exc:  # reported like QEMU's own open failure, so the plan rolls back
        raise QMPCommandError("blockdev-add", "GenericError", f"Could not open '{path}': {exc.strerror}") from None
    try:
        reply = await backend.execute_with_fds("add-fd", {"opaque": tag(node)}, [fd])
    finally:
        os.close(fd)
    return {**arguments, "filename": f"/dev/fdset/{int(reply['fdset-id'])}"}


async def tagged_fdsets(backend: MonitorBackend, nodes: Iterable[str]) -> list[int]:
    """Ids of the fdsets hotluks added for ``nodes`` that QEMU still holds."""
    if not getattr(backend, "passes_fds", False):
        return []
    wanted = {tag(n) for n in nodes}
    return sorted(int(s["fdset-id"]) for s in await backend.execute("query-fdsets")
                  if any(f.get("opaque") in wanted for f in s.get("fds", [])))


async def remove_fdsets(backend: MonitorBackend, nodes: Iterable[str]) -> list[str]:
    """``remove-fd`` every fdset tagged for ``nodes``; returns what was done."""
    done = []
    for fdset in await tagged_fdsets(backend, nodes):
        await backend.execute("remove-fd", {"fdset-id": fdset})
        done.append(f"remove-fd {fdset}")
    return done
