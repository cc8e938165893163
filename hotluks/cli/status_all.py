"""``hotluks status --all``: every hotluks disk on this host, across all VMs with records.

Each VM is reached the way its records say it was: a QMP socket by its path (a socket
that is gone means its QEMU is gone), a libvirt domain by its UUID on ``--connect``.
A QMP VM whose recorded QEMU no longer runs (``/proc``), a domain that is shut off or gone,
or whose socket now leads to another QEMU has ``lost`` disks; one that cannot be asked
for another reason (a busy socket, a different libvirt) has ``unknown`` disks.
Read-only, no locks; exit 3 when any disk is not attached and consistent, or left out of a
libvirt snapshot or backup since its attach (:mod:`hotluks.lifecycle.coverage`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotluks.cli.output import emit
from hotluks.errors import DomainNotFound, HotluksError, InputError, NotRunning
from hotluks.lifecycle.coverage import HINT as NOT_COVERED_HINT
from hotluks.runner.inventory import KnownVM, instance_gone, known_vms, offline_entries
from hotluks.runner.results import StatusEntry


@dataclass(frozen=True)
class VMStatus:
    vm: str
    vm_key: str
    backend: str
    reached: bool
    note: str | None
    disks: list[StatusEntry]

    def to_json(self) -> dict[str, Any]:
        return {"vm": self.vm, "vm_key": self.vm_key, "backend": self.backend, "reached": self.reached,
                "note": self.note, "disks": self.disks}


def _kind(known: KnownVM) -> str:
    return "qmp" if known.vm.startswith("unix:") or "/" in known.vm else "libvirt"


async def _one(known: KnownVM, args: argparse.Namespace) -> VMStatus:
    from hotluks.backends.identity import looks_like_uuid
    from hotluks.backends.select import open_backend
    from hotluks.runner.operator import Operator

    kind = _kind(known)

    def offline(status: str, why: str) -> VMStatus:
        return VMStatus(known.vm, known.vm_key, kind, False, why, offline_entries(known, status, why))

    backend: str | None = "qmp"
    if kind == "qmp":  # (a libvirt domain's next QEMU may carry the disks in its definition: ask libvirt)
        if known.instances and all(instance_gone(i) for i in known.instances):
            return offline("lost", "the QEMU process the disks were attached to is gone")
        path = known.vm[5:] if known.vm.startswith("unix:") else known.vm
        if not Path(path).is_socket():
            return offline("lost", f"QMP socket {path} is gone")
        name = path
    else:
        name = known.vm_key if looks_like_uuid(known.vm_key) else known.vm
        backend = args.backend if args.backend in ("libvirt", "virsh") else None
    try:
        vm = await open_backend(name, uri=args.uri, backend=backend, timeout=max(args.timeout, 1.0))
    except (DomainNotFound, NotRunning) as exc:
        return offline("lost", f"{exc}")
    except HotluksError as exc:
        return offline("unknown", f"cannot reach the VM: {exc}")
    try:
        operator = Operator(vm, state_dir=known.journal.state_dir)
        ident = await operator.identity()
        if ident.key != known.vm_key:
            return offline("lost", f"{known.vm} now leads to another VM ({ident.key})")
        return VMStatus(known.vm, known.vm_key, vm.name, True, None, await operator.status())
    except HotluksError as exc:
        return offline("unknown", f"cannot ask the VM: {exc}")
    finally:
        await vm.close()


async def status_all(state_dir: Path, args: argparse.Namespace) -> list[VMStatus]:
    """The status of every VM with records under ``state_dir`` (asked one after the other)."""
    return [await _one(known, args) for known in known_vms(state_dir)]


def cmd_status_all(args: argparse.Namespace) -> int:
    from hotluks.runner.journal import default_state_dir

    if args.vm is not None:
        raise InputError("status --all takes no VM (it lists the VMs of every record)")
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    vms = asyncio.run(status_all(state_dir, args))
    disks = [d for v in vms for d in v.disks]
    attention = 3 if any(not d.consistent or d.not_covered for d in disks) else 0
    if args.json:
        emit("status", {"all": True, "state_dir": str(state_dir), "vms": [v.to_json() for v in vms]})
        return attention
    if not vms:
        print(f"no hotluks-managed disks in {state_dir}")
    for v in vms:
        print(f"{v.vm} ({v.vm_key}, {v.backend}{'' if v.reached else ', not reached'})")
        for d in v.disks:
            health = "ok" if d.consistent else "in progress" if d.in_progress else d.error or d.status
            print(f"  {d.target:<6} {d.device:<16} {d.shape:<22} {d.status:<13} {health}")
            for moment in d.not_covered:
                print(f"         not covered by {moment.describe()}")
    if any(not d.consistent for d in disks):
        print("hotluks: some disks are not attached as recorded: `hotluks status VM` for one VM", file=sys.stderr)
    if any(d.not_covered for d in disks):
        print(NOT_COVERED_HINT, file=sys.stderr)
    return attention


def cmd_repair_all(args: argparse.Namespace) -> int:
    """``repair --all``: forget the records of VMs that can never run again (a UUID-less QEMU that is gone);
    every other VM is left to ``repair VM`` (its records may be plugged again once it runs)."""
    from hotluks.runner.inventory import vm_gone_for_good
    from hotluks.runner.journal import default_state_dir
    from hotluks.runner.lock import vm_lock

    if args.vm is not None:
        raise InputError("repair --all takes no VM")
    state_dir = Path(args.state_dir) if args.state_dir else default_state_dir()
    forgotten: list[dict[str, Any]] = []

    async def forget() -> None:
        for known in known_vms(state_dir):
            if not vm_gone_for_good(known):
                continue
            known.journal.ensure(recheck=True)
            async with vm_lock(known.journal.dir, 10.0):
                for target, _ in known.entries:
                    known.journal.remove(target)
                    forgotten.append({"vm": known.vm, "vm_key": known.vm_key, "target": target})

    asyncio.run(forget())
    if args.json:
        emit("repair", {"all": True, "state_dir": str(state_dir), "forgotten": forgotten})
        return 0
    for f in forgotten:
        print(f"{f['vm']}: {f['target']}: forgotten (its QEMU process is gone and the VM has no UUID)")
    if not forgotten:
        print(f"nothing to forget in {state_dir}")
    return 0


__all__ = ["cmd_status_all", "cmd_repair_all", "status_all", "VMStatus"]
