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
    c.add_argument("--format", choices=("shell", "argv", "json"), default="shell",
                   help="shell: quoted for a POSIX shell (default); argv: one argument per line; "
                        "json: one JSON list of strings")
    c.add_argument("--json", dest="json", action="store_true",
                   help="a hotluks/1 document with the argument list (schema: hotluks/schemas/cold-cmdline.json)")
    add_secret_option(c)
    c.add_argument("--inline-secrets", action="store_true",
                   help="embed the secret values (from the --secret files) instead of referencing the files")
    c.add_argument("--pci-root-bus", metavar="NAME", default="pci.0",
                   help="QEMU name of the PCI root bus, used for <address type='pci' bus='0'>: "
                        "pci.0 on -M pc (default), pcie.0 on -M q35")
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
    plan = build_plan(load_disk(args.disk), context=PlanContext(pci_root_bus=args.pci_root_bus,
                                                                nbd_tls_dir=nbd_tls_dir()))
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
