"""File access on QEMU's behalf: never hand QEMU a file its own user could not open.

Under libvirt, hotluks (root) opens each file or block device and passes the descriptor
to QEMU, which runs as another user (``libvirt-qemu``) in its own mount namespace. Opening
as root would make hotluks a confused deputy: a root-only file named in a ``<disk>`` would
become readable by the guest. The policy is the one libvirt's DAC driver arranges for the
disks it knows: QEMU's user must be able to open the file itself, with the same access
mode — judged by its uid, gid and supplementary groups against the mode bits of the file
and the search bit of every directory on the way. A QEMU running as root may open
anything. POSIX ACLs are not consulted (a file that only an ACL opens to QEMU is
refused: give QEMU's user or group the mode bits, as ``chown``/``chgrp`` would).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable

from hotluks.errors import RefusedError
from hotluks.permissions import Credentials, permits
from hotluks.plan.steps import FdSource


def process_credentials(pid: int) -> Credentials | None:
    """The effective credentials of process ``pid`` (from ``/proc``), or None when unknown."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        uid = int(fields["Uid"].split()[1])  # real, effective, saved, fs: the effective one
        gids = {int(fields["Gid"].split()[1]), *(int(g) for g in fields.get("Groups", "").split())}
    except (OSError, KeyError, ValueError, IndexError):
        return None
    return Credentials(uid, frozenset(gids))


def pid_of_instance(instance: str) -> int | None:
    """The QEMU pid in a VM identity's instance (``<pid>-<starttime>``), if it names one."""
    head = instance.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def refusal(source: FdSource, who: Credentials) -> str | None:
    """Why QEMU's user could not open ``source`` itself, or None when it could."""
    path = os.path.abspath(source.path)
    parts = path.split(os.sep)
    for depth in range(1, len(parts) - 1):  # every directory on the way needs the search bit
        directory = os.sep.join(parts[: depth + 1]) or os.sep
        try:
            info = os.stat(directory)
        except OSError as exc:
            return f"{directory}: {exc.strerror}"
        if not permits(info, who, 1):
            return f"directory {directory} is not searchable by uid {who.uid}"
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    want = 4 if source.read_only else 6
    if not (stat.S_ISREG(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        return f"{path} is neither a regular file nor a block device"
    if not permits(info, who, want):
        mode = "read" if source.read_only else "read and write"
        return (f"{path} (owner {info.st_uid}:{info.st_gid}, mode {stat.S_IMODE(info.st_mode):04o}) cannot be "
                f"opened to {mode} by QEMU's user (uid {who.uid})")
    return None


def check_qemu_access(sources: Iterable[FdSource], instance: str) -> None:
    """Refuse (exit 2, before anything is sent) a file QEMU's own user could not open.

    Nothing is checked when the QEMU process is not on this host (its credentials unknown).
    """
    sources = list(sources)
    pid = pid_of_instance(instance) if sources else None  # nothing to open for QEMU: no need to ask who it is
    who = process_credentials(pid) if pid is not None else None
    if who is None:
        return
    problems = [reason for reason in (refusal(s, who) for s in sources) if reason]
    if problems:
        raise RefusedError("QEMU would get a file its own user cannot open (hotluks does not open files on "
                           f"QEMU's behalf): {'; '.join(problems)}. Give QEMU's user access as libvirt does "
                           "for its own disks (chown/chgrp, mode 0600/0660); nothing was sent to the VM")
