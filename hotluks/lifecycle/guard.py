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
(``hlg-<target>``) over a 1 MiB empty image (:func:`guard_image`), handed to QEMU
as a read-only descriptor (``add-fd``), used by no device and invisible to the
guest. Removing the node (``blockdev-del`` + ``remove-fd``) lifts the block.
``query-migrate`` lists the reason as "The vdi format used by node 'hlg-vdb' does
not support live migration".

The guard's two steps are part of the attach plan (:mod:`hotluks.runner.guardplan`),
so they are journaled and undone like every other step. This module creates the
image, and removes a guard an older hotluks added outside the plan.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.errors import BackendError, RefusedError
from hotluks.log import get_logger
from hotluks.plan.names import GUARD_PREFIX, guard_node

log = get_logger(__name__)

FDSET_TAG = "hotluks-guard:"
#: backends whose VM has libvirt lifecycle operations (save, managedsave, snapshots, migration)
LIBVIRT_BACKENDS = ("libvirt", "virsh")


def guarded_targets(node_names: list[str]) -> set[str]:
    """Targets whose guard node is among ``node_names``."""
    return {n[len(GUARD_PREFIX):] for n in node_names if n.startswith(GUARD_PREFIX)}


def guard_image(state_dir: Path) -> Path:
    """The guard's 1 MiB empty VDI image in the (trusted) state directory, created once, read-only.

    Created in a private temporary next to it and renamed into place, so concurrent
    attaches never see half an image. It is only ever opened by hotluks and handed to
    QEMU as a read-only descriptor.
    """
    path = state_dir / "guard.vdi"
    if path.is_file() and not path.is_symlink():
        return path
    with tempfile.TemporaryDirectory(prefix=".guard-", dir=state_dir) as where:
        made = os.path.join(where, "guard.vdi")
        try:
            proc = subprocess.run(["qemu-img", "create", "-q", "-f", "vdi", made, "1M"],
                                  capture_output=True, text=True, timeout=30)
        except OSError as exc:
            raise RefusedError(f"cannot run qemu-img for the migration guard: {exc.strerror}; "
                               "nothing was sent to the VM") from None
        if proc.returncode != 0:
            raise RefusedError(f"qemu-img could not create the migration guard image: {proc.stderr.strip()}; "
                               "nothing was sent to the VM")
        os.chmod(made, 0o444)
        os.replace(made, path)
    return path


async def _node_names(backend: MonitorBackend) -> list[str]:
    return [str(n["node-name"]) for n in await backend.execute("query-named-block-nodes", {"flat": True})]


async def _fdsets(backend: MonitorBackend, target: str) -> list[int]:
    wanted = f"{FDSET_TAG}{target}"
    return sorted(int(s["fdset-id"]) for s in await backend.execute("query-fdsets")
                  if any(f.get("opaque") == wanted for f in s.get("fds", [])))


async def remove_unrecorded_guard(backend: MonitorBackend, target: str) -> bool:
    """Lift a guard of ``target`` that no record holds (added by an older hotluks after the plan
    ran, its fdset tagged ``hotluks-guard:``); False when there was none. Never fails a detach."""
    node = guard_node(target)
    removed = False
    try:
        if node in await _node_names(backend):
            await backend.execute("blockdev-del", {"node-name": node})
            removed = True
        if backend.passes_fds:
            for fdset in await _fdsets(backend, target):
                with contextlib.suppress(QMPCommandError):  # already released with its last user
                    await backend.execute("remove-fd", {"fdset-id": fdset})
    except BackendError as exc:
        log.warning("%s: could not remove an old migration guard %s: %s", backend.vm, node, exc)
    return removed
