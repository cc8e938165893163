"""``hotluks plan`` and ``hotluks cold-cmdline``: pure rendering of a disk's plan."""

from __future__ import annotations

import argparse

from hotluks.cli.common import add_secret_option, load_disk, read_secrets, secret_files
from hotluks.headers.tls import add_option as tls_option
from hotluks.headers.tls import apply_option as apply_tls_option


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("plan", help="show the QMP steps that would attach DISK.xml",
                       description="Show the ordered QMP steps (with their undo) that attach DISK.xml. "
                                   "Pure: no VM is touched. Secret values are never shown.")
    p.add_argument("disk", metavar="DISK.xml", help="libvirt-style <disk> XML file ('-' for stdin)")
    p.add_argument("--json", action="store_true",
                   help="print the plan as a hotluks/1 document (schema: hotluks/schemas/plan.json)")
    tls_option(p)
    p.set_defaults(func=cmd_plan)

    c = sub.add_parser("cold-cmdline", help="print -object/-blockdev/-device arguments for a cold boot",
                       description="Print the QEMU command-line arguments that give a freshly started VM the "
                                   "same disk as `hotluks attach`. Secrets are referenced as files.")
    c.add_argument("disk", metavar="DISK.xml", help="libvirt-style <disk> XML file ('-' for stdin)")
    c.add_argument("--format", choices=("shell", "argv", "json", "libvirt"), default="shell",
                   help="shell: quoted for a POSIX shell (default); argv: one argument per line; "
                        "json: one JSON list of strings; libvirt: a <qemu:commandline> block for a persistent "
                        "domain definition, secrets sealed with --key-file (see README, Lifecycle)")
    c.add_argument("--key-file", metavar="FILE", default=None,
                   help="--format libvirt: 32-byte key QEMU reads to unseal the secrets (created, mode 0400 and "
                        "owned by --qemu-user, when absent)")
    c.add_argument("--qemu-user", metavar="USER", default=None,
                   help="--format libvirt: owner of a new key file (default libvirt-qemu or qemu if present)")
    c.add_argument("--json", dest="json", action="store_true",
                   help="a hotluks/1 document with the argument list (schema: hotluks/schemas/cold-cmdline.json)")
    add_secret_option(c)
    c.add_argument("--inline-secrets", action="store_true",
                   help="embed the secret values (from the --secret files) instead of referencing the files")
    c.add_argument("--pci-root-bus", metavar="NAME", default="pci.0",
                   help="QEMU name of the PCI root bus, used for <address type='pci' bus='0'>: "
                        "pci.0 on -M pc (default), pcie.0 on -M q35")
    c.add_argument("--pci-bus", metavar="NAME", default=None,
                   help="QEMU bus for a virtio disk without <address> (a root port id, pci.0), as "
                        "`hotluks placement VM --target DEV` prints for a plugged disk")
    c.add_argument("--pci-slot", metavar="N", default=None, type=lambda v: int(v, 0),
                   help="slot on --pci-bus (e.g. 0x1f)")
    tls_option(c)
    c.set_defaults(func=cmd_cold_cmdline)


def cmd_plan(args: argparse.Namespace) -> int:
    from hotluks.headers.tls import nbd_tls_dir
    from hotluks.plan.planner import PlanContext, build_plan

    apply_tls_option(args)
    plan = build_plan(load_disk(args.disk), context=PlanContext(nbd_tls_dir=nbd_tls_dir()))
    if args.json:
        from hotluks.cli.output import emit
        from hotluks.render.qmp import plan_json

        emit("plan", plan_json(plan))
    else:
        from hotluks.render.listing import render_listing

        print(render_listing(plan))
    return 0


def cmd_cold_cmdline(args: argparse.Namespace) -> int:
    from hotluks.headers.tls import nbd_tls_dir
    from hotluks.plan.planner import PlanContext, build_plan
    from hotluks.render.cmdline import as_shell, cold_boot_args

    apply_tls_option(args)
    disk = load_disk(args.disk)
    plan = build_plan(disk, context=PlanContext(pci_root_bus=args.pci_root_bus, pci_bus=args.pci_bus,
                                                pci_slot=args.pci_slot, nbd_tls_dir=nbd_tls_dir()))
    if args.format == "libvirt":
        from hotluks.lifecycle.cli import print_libvirt_commandline

        return print_libvirt_commandline(disk, plan, args)
    inline = read_secrets(args.secret) if args.inline_secrets else None
    argv = cold_boot_args(plan, secret_files(args.secret), inline)
    if args.json:
        from hotluks.cli.output import emit

        emit("cold-cmdline", {"target": plan.disk.target_dev, "argv": argv, "notes": list(plan.disk.notes)})
    elif args.format == "json":
        import json

        print(json.dumps(argv))
    elif args.format == "argv":
        print("\n".join(argv))
    else:
        print(as_shell(argv))
    return 0
