"""``hotluks attach|detach|status|repair VM …``: run plans against a live VM."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from hotluks.cli.common import add_secret_option, load_disk, read_secrets
from hotluks.cli.output import emit
from hotluks.errors import HotluksError
from hotluks.headers.tls import add_option as tls_option
from hotluks.headers.tls import apply_option as apply_tls_option

if TYPE_CHECKING:
    from hotluks.api import AsyncSession

T = TypeVar("T")

VM_HELP = "libvirt domain name, or a QMP socket (unix:/path or an existing socket path)"
EXIT_CODES = ("exit codes: 0 success; 1 failed and fully rolled back (VM unchanged); 2 refused before "
              "touching the VM; 3 failed and not fully rolled back (run `hotluks repair VM`). SIGINT and "
              "SIGTERM count as failures: before the first change exit 2, after it a verified rollback "
              "(1) or a recorded repair (3)")


class Interrupted(HotluksError):
    """SIGINT/SIGTERM (or cancellation) arrived before anything was sent to the VM."""


def _common(p: argparse.ArgumentParser, *, json_help: str = "machine-readable output", vm_optional: bool = False) -> None:
    if vm_optional:
        p.add_argument("vm", metavar="VM", nargs="?", default=None, help=VM_HELP + " (none: as --all)")
    else:
        p.add_argument("vm", metavar="VM", help=VM_HELP)
    p.add_argument("--connect", "-c", dest="uri", metavar="URI", default=None,
                   help="libvirt URI (default qemu:///system)")
    p.add_argument("--backend", choices=("qmp", "libvirt", "virsh"), default=None,
                   help="force a backend (default: qmp for sockets, libvirt for domains, virsh if "
                        "libvirt-python is missing)")
    p.add_argument("--state-dir", default=None, metavar="DIR",
                   help="journal directory (env HOTLUKS_STATE_DIR; default /var/lib/hotluks for root)")
    p.add_argument("--master-key", metavar="FILE", default=None,
                   help="32-byte AES key the VM holds as a secret object, to encrypt secrets on the monitor")
    p.add_argument("--master-key-id", metavar="ID", default="masterKey0",
                   help="id of that secret object in the VM (default masterKey0)")
    p.add_argument("--json", action="store_true", help=json_help)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    a = sub.add_parser("attach", help="hot-plug DISK.xml into a running VM, all or nothing",
                       description="Plan DISK.xml, check the LUKS header and passphrase, and run the steps "
                                   "against the VM; on any failure every step already done is undone.",
                       epilog=EXIT_CODES)
    _common(a)
    a.add_argument("disk", metavar="DISK.xml", help="libvirt-style <disk> XML ('-' for stdin)")
    add_secret_option(a)
    a.add_argument("--no-preflight", action="store_true", help="skip the LUKS header/passphrase check")
    a.add_argument("--dry-run", action="store_true", help="probe and plan against the VM, send nothing")
    tls_option(a)
    a.add_argument("--allow-weak-header", action="store_true",
                   help="attach even when the LUKS header is below the policy (cipher_null, ECB, PBKDF2 under "
                        "1000 iterations, argon2 under cryptsetup's minimum); refused otherwise")
    a.add_argument("--pin", action="store_true",
                   help="check the LUKS header against the fingerprint pinned for its location, pinning it on "
                        "first use (STATE/pins); a replaced header is refused")
    a.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for QEMU (and for unplug during rollback); default 30")
    a.add_argument("--path", choices=("qmp", "libvirt-native", "auto"), default="auto",
                   help="qmp: hotluks' steps through the monitor; libvirt-native: libvirt's device API for disks "
                        "it expresses (all secrets in libvirt's store; libvirt and virsh backends); auto (default): "
                        "the latter where possible, else qmp (always qmp on a bare QEMU); -v says which and why")
    a.add_argument("--persistent", action="store_true",
                   help="also put the disk into the libvirt domain's definition: libvirt's own on the "
                        "libvirt-native path, <qemu:commandline> as `hotluks persist` does on the QMP path "
                        "(checked before the attach; a failure to write it rolls the attach back)")
    a.add_argument("--key-dir", metavar="DIR", default=None,
                   help="QMP path with --persistent: where the domain's key file lives (default /var/lib/hotluks-keys)")
    a.add_argument("--qemu-user", metavar="USER", default=None,
                   help="QMP path with --persistent: libvirt's QEMU user (default libvirt-qemu)")
    a.set_defaults(func=cmd_attach)

    d = sub.add_parser("detach", help="unplug a disk hotluks attached and delete its nodes and secrets",
                       epilog=EXIT_CODES)
    _common(d)
    what = d.add_mutually_exclusive_group(required=True)
    what.add_argument("disk", metavar="DISK.xml", nargs="?", help="the <disk> that was attached")
    what.add_argument("--target", metavar="DEV", help="the target dev (e.g. vdb) instead of the XML")
    d.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds to wait for the guest to release the device (default 30)")
    d.add_argument("--persistent", action="store_true",
                   help="also take the disk out of the libvirt domain's definition (done anyway when it is there; "
                        "with this flag, failing to reach the definition is an error)")
    d.set_defaults(func=cmd_detach)

    s = sub.add_parser("status", help="list hotluks-managed disks of a VM and their live nodes",
                       epilog="read-only (takes no lock); exit 3 when a disk needs `hotluks repair` or attention "
                              "(also a `lost` disk: its QEMU is gone; `attach` plugs it again, `detach` forgets it)")
    _common(s, vm_optional=True)
    s.add_argument("--all", action="store_true",
                   help="every hotluks disk on this host: the VMs of all records in the state directory")
    s.set_defaults(func=cmd_status, timeout=10.0)  # read-only: takes no lock

    r = sub.add_parser("repair", help="finish or undo operations interrupted by a crash", epilog=EXIT_CODES)
    _common(r, vm_optional=True)
    r.add_argument("--all", action="store_true",
                   help="instead: forget the records of VMs that can never run again (a QEMU without a UUID "
                        "whose process is gone)")
    r.add_argument("--timeout", type=float, default=30.0, metavar="S", help="unplug wait (default 30)")
    r.set_defaults(func=cmd_repair)

    z = sub.add_parser("resize", help="grow a disk hotluks attached (QMP block_resize); the guest sees the new size",
                       description="Resize the block node the disk's device sits on (as recorded at attach): "
                                   "its LUKS node, or its format node for qcow2-native; a detached-header "
                                   "payload grows with it. Shrinking is refused without --force.",
                       epilog="exit codes: 0 resized (or already that size); 1 QEMU refused, the disk is "
                              "unchanged; 2 refused before anything was sent (unknown target, shrink without "
                              "--force, bad SIZE); 3 the resize failed and the size changed anyway")
    _common(z)
    z.add_argument("target", metavar="TARGET", help="the target dev of the attached disk (e.g. vdb)")
    z.add_argument("size", metavar="SIZE",
                   help="new size: bytes, or with K, M, G, T, P, E (powers of 1024, as qemu-img); "
                        "+SIZE/-SIZE grow/shrink by that much")
    z.add_argument("--force", action="store_true", help="allow shrinking (data past the new end is lost)")
    z.set_defaults(func=cmd_resize, timeout=30.0)


async def _with_session(args: argparse.Namespace, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    from hotluks.api import aconnect
    from hotluks.secrets import read_secret_file

    master = None
    if args.master_key:
        master = read_secret_file(args.master_key).value
    async with aconnect(args.vm, uri=args.uri, state_dir=args.state_dir, master_key=master,
                        master_key_id=args.master_key_id, backend=args.backend,
                        timeout=max(args.timeout, 1.0)) as session:
        return await work(session)


async def _interruptible(args: argparse.Namespace, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work``; SIGINT/SIGTERM cancel it, which the runner turns into rollback (1) or repair (3)."""
    import asyncio
    import signal

    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    received: list[str] = []
    done: list[T] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig.name)
        task.cancel()

    async def tracked(session: AsyncSession) -> T:
        result = await work(session)
        done.append(result)
        return result

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        return await _with_session(args, tracked)
    except asyncio.CancelledError:
        if done:  # the operation had finished; only closing the connection was interrupted
            return done[0]
        raise Interrupted(f"interrupted by {received[0] if received else 'cancellation'} before anything "
                                "was sent to the VM; nothing changed") from None
    except HotluksError as exc:
        if received:
            exc.args = (f"{received[0]} received: {exc}",)
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _run(args: argparse.Namespace, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` on a session; errors propagate (``main`` prints them, as JSON under ``--json``)."""
    import asyncio

    return asyncio.run(_interruptible(args, work))


def cmd_attach(args: argparse.Namespace) -> int:
    apply_tls_option(args)
    disk = load_disk(args.disk)
    secrets = read_secrets(args.secret)
    result = _run(args, lambda s: s.attach(disk, secrets, preflight=not args.no_preflight, dry_run=args.dry_run,
                                           timeout=args.timeout, pin=args.pin,
                                           allow_weak_header=args.allow_weak_header, path=args.path,
                                           persistent=args.persistent, key_dir=args.key_dir,
                                           qemu_user=args.qemu_user))
    if args.json:
        emit("attach", result.to_json())
    elif result.already_attached:
        print(f"{result.target} is already attached to {result.vm} as device {result.device} (same disk): "
              "nothing to do")
    elif result.dry_run:
        print(f"dry run: would attach {result.target} as {result.device} ({result.shape}); "
              f"preflight: {result.preflight}")
        for cmd in result.commands:
            print("  " + json.dumps(cmd))
    else:
        total = sum(s.seconds for s in result.steps)
        print(f"attached {result.target} to {result.vm} as device {result.device} "
              f"({len(result.steps)} steps, {total * 1000:.1f} ms, {result.path}); preflight: {result.preflight}")
        if result.persistent:
            print(f"  and in the definition of {result.vm}" + (f" (key file {result.key_file})" if result.key_file else ""))
    return 0


def cmd_detach(args: argparse.Namespace) -> int:
    target = args.target or load_disk(args.disk).target_dev
    result = _run(args, lambda s: s.detach(target, timeout=args.timeout, persistent=args.persistent))
    if args.json:
        emit("detach", result.to_json())
    elif result.already_absent:
        print(f"{result.target} is not attached by hotluks to {result.vm}: nothing to do")
    else:
        print(f"detached {result.target} (device {result.device}) from {result.vm} in "
              f"{result.seconds * 1000:.1f} ms: {', '.join(result.removed) or 'nothing left to remove'}")
    if result.persistent and not args.json:
        print(f"  and took it out of the definition of {result.vm}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.all or args.vm is None:
        from hotluks.cli.status_all import cmd_status_all

        return cmd_status_all(args)
    disks = _run(args, lambda s: s.status())
    attention = 3 if any(d.needs_repair or d.status == "lost" or d.not_covered for d in disks) else 0
    if args.json:
        emit("status", {"vm": args.vm, "disks": [d.to_json() for d in disks]})
        return attention
    if not disks:
        print(f"{args.vm}: no hotluks-managed disks")
    for d in disks:
        missing = [i.name for i in d.components if not i.present]
        health = ("ok" if d.consistent else "in progress" if d.in_progress else
                  "missing " + ", ".join(missing) if missing and d.status == "attached" else d.status)
        print(f"{d.target:<6} {d.device:<16} {d.shape:<22} {d.status:<13} {health}")
        if d.header_fingerprint:
            print(f"       header pinned: sha256:{d.header_fingerprint}")
        if d.error:
            print(f"       last error: {d.error}")
        for moment in d.not_covered:
            print(f"       not covered by {moment.describe()}")
    if any(d.status == "lost" for d in disks):
        print(f"hotluks: lost disks: the QEMU they were attached to is gone; `hotluks attach {args.vm} DISK.xml` "
              "plugs one again, `hotluks detach` forgets it", file=sys.stderr)
    if any(d.needs_repair for d in disks):
        print(f"hotluks: some disks need attention: run `hotluks repair {args.vm}`", file=sys.stderr)
    if any(d.not_covered for d in disks):
        from hotluks.lifecycle.coverage import HINT

        print(HINT, file=sys.stderr)
    return attention


def cmd_repair(args: argparse.Namespace) -> int:
    if args.all or args.vm is None:
        from hotluks.cli.status_all import cmd_repair_all

        if not args.all:
            from hotluks.errors import InputError

            raise InputError("repair needs a VM (or --all)")
        return cmd_repair_all(args)
    actions = _run(args, lambda s: s.repair(timeout=args.timeout))
    if args.json:
        emit("repair", {"vm": args.vm, "actions": [a.to_json() for a in actions]})
    elif not actions:
        print(f"{args.vm}: nothing to repair")
    else:
        for a in actions:
            print(f"{a.target}: {a.action}: {', '.join(a.undone) or 'nothing was left in the VM'}"
                  + (f" ({a.error})" if a.error else ""))
    incomplete = [a for a in actions if a.action == "incomplete"]
    if incomplete:
        print("hotluks: error: repair incomplete; run it again once the guest released its devices",
              file=sys.stderr)
        return 3
    return 0


def cmd_resize(args: argparse.Namespace) -> int:
    from hotluks.runner.resize import parse_size

    parse_size(args.size)  # a bad SIZE is refused before connecting
    result = _run(args, lambda s: s.resize(args.target, args.size, force=args.force))
    if args.json:
        emit("resize", result.to_json())
    elif not result.changed:
        print(f"{result.target} of {result.vm} already has {result.new_size} bytes: nothing to do")
    else:
        print(f"resized {result.target} of {result.vm} (node {result.node}) from {result.old_size} to "
              f"{result.new_size} bytes in {result.seconds * 1000:.1f} ms")
    return 0


__all__ = ["register"]
