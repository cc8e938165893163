"""Descriptor passing as planned steps (pure): ``add-fd`` before each file node, ``/dev/fdset/N`` in it.

Under libvirt, QEMU runs as ``libvirt-qemu`` in a private ``/dev`` mount namespace (and
often under AppArmor/SELinux), so a path sent through the monitor is usually not
openable by QEMU. For backends that pass descriptors, each ``file``/``host_device``
node gets an ``add-fd`` step right before it, with an explicit ``fdset-id`` chosen
here from the fdsets the VM already has, and the node names ``/dev/fdset/N``. The
executor opens the file and sends the descriptor with that step; the undo is
``remove-fd`` of the same id. So ``--dry-run``, the journal and rollback all see
exactly what is sent. Ids come from a range of their own (``FDSET_BASE`` up) so they
never take the one libvirt would allocate next (libvirt counts up from 0).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from hotluks.plan.steps import FdSource, Plan, Step

FD_DRIVERS = ("file", "host_device")
FD_TAG = "hotluks:"
FDSET_BASE = 1 << 20


def wants_fd(arguments: dict[str, Any]) -> bool:
    """True for a file/block protocol node that names a path (not already an fdset)."""
    return (arguments.get("driver") in FD_DRIVERS
            and not str(arguments.get("filename", "")).startswith("/dev/fdset/"))


def with_fd_passing(plan: Plan, fdsets_in_use: Collection[int]) -> Plan:
    """``plan`` with an ``add-fd`` step before every file node, which then reads ``/dev/fdset/N``."""
    used = set(fdsets_in_use)
    next_id = FDSET_BASE
    steps: list[Step] = []
    for step in plan.steps:
        if step.kind == "node" and wants_fd(step.arguments):
            while next_id in used:
                next_id += 1
            used.add(next_id)
            args = step.arguments
            cache = args.get("cache")
            source = FdSource(str(args["filename"]), read_only=bool(args.get("read-only")),
                              direct=isinstance(cache, dict) and bool(cache.get("direct")))
            steps.append(Step("fd", step.role, "add-fd", {"fdset-id": next_id, "opaque": f"{FD_TAG}{step.name}"},
                              "remove-fd", {"fdset-id": next_id}, fd_source=source))
            step = Step(step.kind, step.role, step.command, {**args, "filename": f"/dev/fdset/{next_id}"},
                        step.undo_command, step.undo_arguments, step.secret)
        steps.append(step)
    return Plan(disk=plan.disk, steps=tuple(steps))
