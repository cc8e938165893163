"""``hotluks luks fingerprint | header-backup | header-restore``: keeping headers under control.

Registered into the ``luks`` command group by :mod:`hotluks.cli.luks`.
"""

from __future__ import annotations

import argparse


def register(cmds: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the header-control actions to ``hotluks luks``."""
    p = cmds.add_parser("fingerprint", help="print the header's pinnable identity (sha256); "
                                            "unchanged by keyslot changes, changed by a swapped header")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--header", metavar="H", help="detached LUKS header file or device")
    p.add_argument("--json", action="store_true", help="machine-readable output with the covered fields")
    p.add_argument("--xml", action="store_true", help="print the <fingerprint> element for <header>")
    p.set_defaults(func=cmd_fingerprint)

    p = cmds.add_parser("header-backup", help="save the header and keyslot areas to a new 0600 file")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--header", metavar="H", help="detached LUKS header file or device")
    p.add_argument("--header-backup-file", required=True, metavar="FILE", help="backup file (must not exist)")
    p.add_argument("--json", action="store_true", help="print a hotluks/1 document")
    p.set_defaults(func=cmd_header_backup)

    p = cmds.add_parser("header-restore", help="write a header backup back; refuses another volume key's "
                                               "header unless --force")
    p.add_argument("device", metavar="DEVICE")
    p.add_argument("--header", metavar="H", help="detached LUKS header file or device to restore into")
    p.add_argument("--header-backup-file", required=True, metavar="FILE", help="backup file to restore")
    p.add_argument("--json", action="store_true", help="print a hotluks/1 document")
    p.add_argument("--force", "--batch-mode", dest="force", action="store_true",
                   help="restore even when the device holds a header of another volume key")
    p.set_defaults(func=cmd_header_restore)


def cmd_fingerprint(args: argparse.Namespace) -> int:
    from hotluks.cli.output import emit
    from hotluks.luks import open_header
    from hotluks.luks.fingerprint import fingerprint

    fp = fingerprint(open_header(args.device, header=args.header))
    if args.json:
        emit("luks fingerprint", fp.to_json())
    elif args.xml:
        print(f"<fingerprint type='sha256'>{fp.value}</fingerprint>")
    else:
        print(f"sha256:{fp.value}")
    return 0


def cmd_header_backup(args: argparse.Namespace) -> int:
    from hotluks.cli.luks import done
    from hotluks.luks.backup import header_backup
    from hotluks.luks.fingerprint import fingerprint

    hdr = header_backup(args.device, args.header_backup_file, header=args.header)
    value = fingerprint(hdr).value
    return done(args, f"LUKS{hdr.version} header of {args.header or args.device} saved to {args.header_backup_file} "
                      f"(fingerprint sha256:{value})",
                {"version": hdr.version, "device": args.device, "header": args.header,
                 "header_backup_file": args.header_backup_file, "fingerprint": value})


def cmd_header_restore(args: argparse.Namespace) -> int:
    from hotluks.cli.luks import done
    from hotluks.luks.backup import header_restore

    res = header_restore(args.device, args.header_backup_file, header=args.header, force=args.force)
    how = "replaced atomically" if res.atomic else "written in place"
    was = "" if res.previous is None else (" (same volume key as before)" if res.previous == res.fingerprint
                                          else f" (FORCED over another header, sha256:{res.previous})")
    return done(args, f"header restored to {args.header or args.device}, {how}; fingerprint sha256:{res.fingerprint}{was}",
                {"device": args.device, "header": args.header, "header_backup_file": args.header_backup_file,
                 "fingerprint": res.fingerprint, "previous": res.previous, "atomic": res.atomic,
                 "forced": res.previous is not None and res.previous != res.fingerprint})
