"""``hotluks placement VM --target DEV``: where a plugged disk sits, as `cold-cmdline` flags.

With them, `hotluks cold-cmdline` gives a destination QEMU (``-incoming``) the device on the
same bus and slot, as live migration needs.
"""

from __future__ import annotations

import argparse

from hotluks.cli.vm import VM_HELP, within


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("placement", help="print a plugged disk's bus and slot as cold-cmdline flags",
                       description="Read where the disk's device sits in the running VM and print the "
                                   "`hotluks cold-cmdline` options (--pci-bus, --pci-slot) that put it there "
                                   "again, e.g. on the destination QEMU of a live migration.")
    p.add_argument("vm", metavar="VM", help=VM_HELP)
    p.add_argument("--target", required=True, metavar="DEV", help="the disk's target dev (e.g. vdb)")
    p.add_argument("--device", metavar="ID", default=None, help="device id when the disk had an <alias>")
    p.add_argument("--connect", "-c", dest="uri", metavar="URI", default=None, help="libvirt URI")
    p.add_argument("--backend", choices=("qmp", "libvirt", "virsh"), default=None)
    p.add_argument("--json", action="store_true", help='print {"bus", "slot", "function", "flags"}')
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for QEMU, in all (connection, handshake, replies); default 10")
    p.set_defaults(func=cmd_placement)


def cmd_placement(args: argparse.Namespace) -> int:
    import asyncio

    from hotluks.api import open_vm_backend
    from hotluks.lifecycle.placement_probe import DevicePlacement, device_placement
    from hotluks.plan.names import Namer

    device = args.device or Namer(args.target).device_id

    async def probe() -> DevicePlacement:
        backend = await open_vm_backend(args.vm, uri=args.uri, backend=args.backend, timeout=max(args.timeout, 1.0))
        try:
            return await device_placement(backend, device)
        finally:
            await backend.close()

    where = asyncio.run(within(max(args.timeout, 1.0), probe(), "nothing was changed"))
    flags = where.cold_cmdline_flags()
    if args.json:
        from hotluks.cli.output import emit

        emit("placement", {"device": device, "bus": where.bus, "slot": where.slot, "function": where.function,
                           "flags": flags})
    else:
        print(" ".join(flags))
    return 0
