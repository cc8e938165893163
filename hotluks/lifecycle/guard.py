"""A migration guard: make QEMU refuse save, managedsave, internal snapshots and migration up front.

A disk plugged through the monitor is part of the VM's migration stream, but
libvirt does not know it: the incoming side of ``virsh restore``, ``start`` after
``managedsave``, ``snapshot-revert`` and ``migrate`` starts QEMU without it, the
stream cannot be loaded, and the VM is left off (see the README's Lifecycle
section). Until hotluks can carry the disk through those paths, it makes QEMU
refuse them while the VM still runs.

QEMU refuses to migrate (and so to save or take an internal snapshot of) a VM
that has a migration blocker. Some block drivers register one when a node is
opened; ``vdi`` does, for any image. The guard is a read-only ``vdi`` node
(``hlg-<target>``) over a 1 KiB empty image, handed to QEMU as an open
descriptor (``add-fd``; the file is unlinked at once), used by no device and
invisible to the guest. Removing the node (``blockdev-del`` + ``remove-fd``)
lifts the block. ``query-migrate`` lists the reason as "The vdi format used by
node 'hlg-vdb' does not support live migration".
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import tempfile

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.errors import BackendError

log = logging.getLogger(__name__)

GUARD_PREFIX = "hlg-"
FDSET_TAG = "hotluks-guard:"
#: backends whose VM has libvirt lifecycle operations (save, managedsave, snapshots, migration)
LIBVIRT_BACKENDS = ("libvirt", "virsh")


def guard_node(target: str) -> str:
    """The guard's node name for ``target`` (never one of hotluks' ``hl-``/libvirt's ``libvirt-`` names)."""
    return f"{GUARD_PREFIX}{target}"[:31]


def guarded_targets(node_names: list[str]) -> set[str]:
    """Targets whose guard node is among ``node_names``."""
    return {n[len(GUARD_PREFIX):] for n in node_names if n.startswith(GUARD_PREFIX)}


def _guard_image_fd() -> int:
    """A read-only descriptor of a fresh 1 KiB VDI image whose file is already unlinked."""
    with tempfile.TemporaryDirectory(prefix="hotluks-guard-") as where:
        path = os.path.join(where, "guard.vdi")
        try:
            proc = subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", path, "1M"],
                                  capture_output=True, text=True, timeout=30)
        except OSError as exc:
            raise BackendError(f"cannot run qemu-img for the migration guard: {exc.strerror}") from None
        if proc.returncode != 0:
            raise BackendError(f"qemu-img could not create the migration guard image: {proc.stderr.strip()}")
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


async def _node_names(backend: MonitorBackend) -> list[str]:
    return [str(n["node-name"]) for n in await backend.execute("query-named-block-nodes", {"flat": True})]


async def _fdsets(backend: MonitorBackend, target: str) -> list[int]:
    wanted = f"{FDSET_TAG}{target}"
    return sorted(int(s["fdset-id"]) for s in await backend.execute("query-fdsets")
                  if any(f.get("opaque") == wanted for f in s.get("fds", [])))


async def add_guard(backend: MonitorBackend, target: str) -> bool:
    """Block migration while ``target`` is plugged; False when the guard was already there.

    All or nothing: a failed ``blockdev-add`` removes the descriptor it passed.
    """
    node = guard_node(target)
    if node in await _node_names(backend):
        return False
    fd = _guard_image_fd()
    try:
        reply = await backend.execute_with_fds("add-fd", {"opaque": f"{FDSET_TAG}{target}"}, [fd])
    finally:
        os.close(fd)
    fdset = int(reply["fdset-id"])
    try:
        await backend.execute("blockdev-add", {
            "driver": "vdi", "node-name": node, "read-only": True,
            "file": {"driver": "file", "filename": f"/dev/fdset/{fdset}", "read-only": True, "locking": "off"}})
    except BaseException:
        with contextlib.suppress(BackendError):
            await backend.execute("remove-fd", {"fdset-id": fdset})
        raise
    return True


async def remove_guard(backend: MonitorBackend, target: str) -> bool:
    """Lift the guard of ``target``; False when there was none."""
    node = guard_node(target)
    removed = False
    if node in await _node_names(backend):
        await backend.execute("blockdev-del", {"node-name": node})
        removed = True
    if backend.passes_fds:
        for fdset in await _fdsets(backend, target):
            with contextlib.suppress(QMPCommandError):  # already released with its last user
                await backend.execute("remove-fd", {"fdset-id": fdset})
    return removed


async def guard_after_attach(backend: MonitorBackend, target: str) -> bool:
    """The attach-time hook: guard a libvirt domain's new disk; never fails the attach.

    Returns True when the VM is guarded. A failure is logged: the disk stays
    attached, and libvirt's save/snapshot/migration are then not refused.
    """
    if backend.name not in LIBVIRT_BACKENDS or not backend.passes_fds:
        return False
    try:
        await add_guard(backend, target)
    except BackendError as exc:
        log.warning("%s: could not add the migration guard for %s (%s); libvirt save, managedsave, "
                    "snapshots and migration of this VM are NOT refused and would lose the disk",
                    backend.vm, target, exc)
        return False
    return True
