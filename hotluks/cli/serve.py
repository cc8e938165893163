"""``hotluks header serve HEADER``: serve a detached header over NBD (TLS, one authorised client)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    top = sub.add_parser("header", help="serve detached headers to the hosts that run the VMs")
    cmds = top.add_subparsers(dest="header_command", metavar="ACTION")
    cmds.required = True
    p = cmds.add_parser(
        "serve", help="run qemu-nbd serving HEADER read-only (throwaway overlay), over TLS, to one client DN",
        description="Run qemu-nbd in the foreground with hotluks' header-server recipe: --snapshot (clients write "
                    "to a throwaway overlay; the header file is only read), TLS with verify-peer from --tls-dir "
                    "(ca-cert.pem, server-cert.pem, server-key.pem) and, with --allow-dn, only that client "
                    "certificate DN admitted. Clients use <source protocol='nbd' name=EXPORT tls='yes'>.")
    p.add_argument("header", metavar="HEADER", help="the detached LUKS header file")
    p.add_argument("--tls-dir", metavar="DIR", help="server x509 directory; omit only for a trusted UNIX socket")
    p.add_argument("--allow-dn", metavar="DN", help="the one client certificate DN admitted, e.g. CN=host-1")
    p.add_argument("--export", default="hdr", help="export name (default hdr)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:10809",
                       help="TCP address (default 127.0.0.1:10809)")
    where.add_argument("--socket", metavar="PATH", help="UNIX socket instead of TCP")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the qemu-nbd command, do not run")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import os
    import shlex

    from hotluks import luks
    from hotluks.errors import InputError
    from hotluks.headers.serve import serve_argv

    luks.open_header(args.header)  # refuse to serve something that is not a valid LUKS header
    if args.allow_dn and not args.tls_dir:
        raise InputError("--allow-dn needs --tls-dir: without TLS there is no client certificate to check")
    if not args.tls_dir and not args.socket:
        raise InputError("serving a header over TCP needs --tls-dir (TLS); without it use --socket")
    host, _, port = args.listen.rpartition(":")
    if not args.socket and (not host or not port.isdigit()):
        raise InputError(f"--listen wants HOST:PORT, not {args.listen!r}")
    argv = serve_argv(os.path.abspath(args.header), tls_dir=args.tls_dir, allow_dn=args.allow_dn,
                      export=args.export, host=host or "127.0.0.1", port=int(port or 10809), socket=args.socket)
    if args.print_only:
        print(shlex.join(argv))
        return 0
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise InputError(f"cannot run qemu-nbd: {exc.strerror} (Debian package qemu-utils)") from None
    return 0  # not reached
