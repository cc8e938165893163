"""``hotluks persist VM DISK.xml`` / ``hotluks persist VM --target DEV --remove``.

Writes an attached disk into the libvirt domain's persistent definition as
``<qemu:commandline>`` (same bus and slot, secrets sealed with the domain's key file),
so that the next ``virsh start`` — also after ``destroy`` — has it again.
"""

from __future__ import annotations

import argparse

from hotluks.cli.common import add_secret_option, load_disk, read_secrets
from hotluks.errors import InputError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("persist", help="write an attached disk into a libvirt domain's definition",
                       description="Add the disk (attached now) to the domain's persistent definition as "
                                   "<qemu:commandline> arguments at its current bus and slot, so that the next "
                                   "start has it; --remove takes it out again. See README, Lifecycle.")
    p.add_argument("vm", metavar="DOMAIN", help="libvirt domain name")
    p.add_argument("disk", metavar="DISK.xml", nargs="?", help="the <disk> that was attached")
    p.add_argument("--target", metavar="DEV", help="with --remove: the target dev (e.g. vdb)")
    p.add_argument("--remove", action="store_true", help="take the disk out of the definition")
    p.add_argument("--connect", "-c", dest="uri", metavar="URI", default="qemu:///system", help="libvirt URI")
    p.add_argument("--key-dir", metavar="DIR", default=None,
                   help="where the domain's key file lives (default /var/lib/hotluks-keys; must be "
                        "enterable by the QEMU user)")
    p.add_argument("--qemu-user", metavar="USER", default=None, help="libvirt's QEMU user (default libvirt-qemu)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    add_secret_option(p)
    p.set_defaults(func=cmd_persist, timeout=10.0)


def cmd_persist(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from hotluks.lifecycle.persist import DEFAULT_KEY_DIR, Persisted, persist, unpersist

    if args.remove:
        target = args.target or (load_disk(args.disk).target_dev if args.disk else None)
        if target is None:
            raise InputError("persist --remove needs --target DEV or DISK.xml")
        result = asyncio.run(unpersist(target, domain=args.vm, uri=args.uri))
    else:
        if not args.disk:
            raise InputError("persist needs the DISK.xml that was attached")
        disk = load_disk(args.disk)
        secrets = read_secrets(args.secret)

        async def run() -> Persisted:
            from hotluks.api import open_vm_backend

            backend = await open_vm_backend(args.vm, uri=args.uri, backend="libvirt", timeout=args.timeout)
            try:
                return await persist(backend, disk, domain=args.vm, uri=args.uri, secrets=secrets,
                                     key_dir=Path(args.key_dir) if args.key_dir else DEFAULT_KEY_DIR,
                                     qemu_user=args.qemu_user)
            finally:
                await backend.close()

        result = asyncio.run(run())
    if args.json:
        from hotluks.cli.output import emit

        emit("persist", result.to_json())
    elif args.remove:
        print(f"{result.target}: {'removed from' if result.changed else 'was not in'} the definition of {result.domain}")
    else:
        print(f"{result.target}: in the definition of {result.domain} (key file {result.key_file})")
    return 0
