"""Who a VM is: its UUID and the QEMU process (pid + start time) running it.

A pid alone is reused by the kernel; a pid together with the process start time
(field 22 of ``/proc/PID/stat``, in clock ticks since boot) names one process
for the lifetime of the host. Every QMP socket of one QEMU, and every URI that
reaches one libvirt domain, therefore resolves to the same identity.
"""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotluks.errors import BackendError

if TYPE_CHECKING:  # pragma: no cover
    from hotluks.backends.base import MonitorBackend

ZERO_UUID = "00000000-0000-0000-0000-000000000000"
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
PROC = Path("/proc")


def looks_like_uuid(text: str) -> bool:
    """True for a UUID with or without dashes, in any case."""
    return UUID_RE.match(text) is not None


def normalize_uuid(text: str) -> str:
    """The canonical lower-case, dashed form of a UUID (as libvirt prints it)."""
    if not looks_like_uuid(text):
        raise ValueError(f"not a UUID: {text!r}")
    h = text.replace("-", "").lower()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def peer_pid(sock: socket.socket) -> int | None:
    """The pid of the process at the other end of a connected UNIX socket (``SO_PEERCRED``)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid = struct.unpack("3i", raw)[0]
    return pid if pid > 0 else None


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """The process's start time in clock ticks since boot, or None when it is not visible."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # "PID (COMM) STATE PPID ..."; COMM may hold spaces and parentheses: split after the last ')'
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # field 22 overall; fields[0] is field 3 (state)
    except (IndexError, ValueError):
        return None


def thread_group(tid: int, proc: Path = PROC) -> int | None:
    """The pid of the process a thread id belongs to (``Tgid`` in ``/proc/TID/status``)."""
    try:
        status = (proc / str(tid) / "status").read_text()
    except OSError:
        return None
    match = re.search(r"(?m)^Tgid:\s*(\d+)$", status)
    return int(match.group(1)) if match else None


def process_instance(pid: int, proc: Path = PROC) -> str | None:
    """``PID-STARTTIME`` for a live process, or None when /proc does not show it."""
    started = start_time(pid, proc)
    return None if started is None else f"{pid}-{started}"


async def vm_uuid(backend: MonitorBackend) -> str | None:
    """The VM's UUID from ``query-uuid``; None when QEMU runs without one (all zeros)."""
    reply = await backend.execute("query-uuid")
    text = reply.get("UUID") if isinstance(reply, dict) else None
    if not isinstance(text, str) or not looks_like_uuid(text):
        raise BackendError("query-uuid: unexpected reply from QEMU")
    uuid = normalize_uuid(text)
    return None if uuid == ZERO_UUID else uuid


async def qemu_pid_from_vcpus(backend: MonitorBackend, proc: Path = PROC) -> int | None:
    """The pid of the QEMU process, found through its vCPU threads (``query-cpus-fast``).

    Works through any monitor path (libvirt, virsh, QMP) as long as the QEMU runs on this
    host in our pid namespace; None otherwise.
    """
    reply: Any = await backend.execute("query-cpus-fast")
    if not isinstance(reply, list):
        return None
    for cpu in reply:
        tid = cpu.get("thread-id") if isinstance(cpu, dict) else None
        if isinstance(tid, int) and not isinstance(tid, bool) and tid > 0:
            pid = thread_group(tid, proc)
            if pid is not None:
                return pid
    return None
