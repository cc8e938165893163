"""``hotluks rotate VM DISK.xml --new-key-file F``: change an attached disk's passphrase."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from hotluks.cli.common import add_secret_option
    from hotluks.cli.vm import EXIT_CODES, _common

    r = sub.add_parser("rotate", help="change the passphrase of an attached disk's detached header, all or nothing",
                       description="Add a keyslot for the new passphrase to the disk's header file, check it opens, "
                                   "remove the old keyslot, replace the header file atomically and, when the old "
                                   "passphrase came from libvirt, update the libvirt secret. A header backup is "
                                   "taken first (STATE/backups) and restored on any failure. The guest keeps "
                                   "reading: QEMU already holds the volume key.", epilog=EXIT_CODES)
    _common(r)
    r.add_argument("disk", metavar="DISK.xml", help="the <disk> that was attached ('-' for stdin)")
    r.add_argument("--new-key-file", required=True, metavar="FILE", help="the new passphrase, byte for byte")
    add_secret_option(r)
    r.set_defaults(func=cmd_rotate, timeout=30.0)


def cmd_rotate(args: argparse.Namespace) -> int:
    from hotluks.cli.common import load_disk, read_secrets
    from hotluks.cli.output import emit
    from hotluks.cli.vm import _run
    from hotluks.secrets import read_secret_file

    disk = load_disk(args.disk)
    secrets = read_secrets(args.secret)
    new = read_secret_file(args.new_key_file).value
    result = _run(args, lambda s: s.rotate(disk, new, secrets))
    if args.json:
        emit("rotate", result.to_json())
    else:
        where = " and the libvirt secret" if result.libvirt_secret_updated else ""
        print(f"rotated {result.target}: keyslot {result.removed_keyslot} removed, {result.added_keyslot} added in "
              f"{result.header}{where} ({result.seconds:.2f} s); backup {result.backup}")
    return 0
