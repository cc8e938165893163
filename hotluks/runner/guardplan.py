"""The migration guard as planned steps (pure): ``add-fd`` of the guard image, then the ``hlg-`` node.

Under libvirt, a disk plugged through the monitor must not be carried into a save,
managedsave, internal snapshot or migration (see :mod:`hotluks.lifecycle.guard`).
The guard is part of the plan like every other step — journaled, shown by
``--dry-run``, undone by rollback, detach and repair, and checked by ``status`` —
and it comes *first*: QEMU refuses those operations before the disk's first node
exists, and a detach lifts the refusal only after the device and its nodes are gone
(an unplug the guest has not finished keeps the VM guarded).
"""

from __future__ import annotations

from collections.abc import Collection

from hotluks.plan.names import guard_node
from hotluks.plan.steps import FdSource, Plan, Step
from hotluks.runner.fdplan import FD_TAG, FDSET_BASE

GUARD_ROLE = "migration-guard"


def guard_steps(target: str, image: str, fdset_id: int) -> tuple[Step, Step]:
    """``add-fd`` of ``image`` (read-only) into ``fdset_id``, and the read-only ``vdi`` node over it."""
    node = guard_node(target)
    add_fd = Step("fd", GUARD_ROLE, "add-fd", {"fdset-id": fdset_id, "opaque": f"{FD_TAG}{node}"},
                  "remove-fd", {"fdset-id": fdset_id}, fd_source=FdSource(image, read_only=True))
    vdi = Step("node", GUARD_ROLE, "blockdev-add",
               {"driver": "vdi", "node-name": node, "read-only": True,
                "file": {"driver": "file", "filename": f"/dev/fdset/{fdset_id}", "read-only": True,
                         "locking": "off"}},
               "blockdev-del", {"node-name": node})
    return add_fd, vdi


def with_migration_guard(plan: Plan, image: str, fdsets_in_use: Collection[int]) -> Plan:
    """``plan`` with the guard's two steps in front, in the first fdset neither the VM nor the plan uses."""
    used = set(fdsets_in_use) | {int(s.arguments["fdset-id"]) for s in plan.steps if s.kind == "fd"}
    fdset_id = FDSET_BASE
    while fdset_id in used:
        fdset_id += 1
    return Plan(disk=plan.disk, steps=(*guard_steps(plan.disk.target_dev, image, fdset_id), *plan.steps))
