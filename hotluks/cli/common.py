"""Helpers shared by command modules (kept light: no heavy imports at module level)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hotluks.arguments import check_seconds, check_vm
from hotluks.arguments import shown as _shown
from hotluks.errors import InputError

if TYPE_CHECKING:
    from hotluks.model import Disk
    from hotluks.secrets import SecretValue

def load_disk(path: str) -> Disk:
    """Parse DISK.xml (``-`` reads stdin)."""
    from hotluks.model import Disk
    from hotluks.xmlparse import MAX_XML_BYTES, parse_disk, read_disk_file

    if path == "-":
        return parse_disk(sys.stdin.buffer.read(MAX_XML_BYTES + 1), Disk, source="<stdin>")
    return read_disk_file(path, Disk)


def add_secret_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret", action="append", default=[], metavar="KEY=FILE",
                        help="secret value from FILE, for the secret whose uuid or usage is KEY (repeatable)")


def secret_files(specs: list[str]) -> dict[str, str]:
    from hotluks.secrets import parse_secret_spec

    return dict(parse_secret_spec(s) for s in specs)


def read_secrets(specs: list[str]) -> dict[str, SecretValue]:
    """Read each ``--secret KEY=FILE``; FIFOs, devices and sockets are refused before any read."""
    from hotluks.secrets import read_secret_file

    files = secret_files(specs)
    for path in files.values():
        check_regular_file(path, "secret file")
    return {key: read_secret_file(path) for key, path in files.items()}


def print_json(doc: Any) -> None:
    import json

    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")


def check_regular_file(path: str, what: str) -> None:
    """Refuse, without blocking, a path that is not a readable regular file (``-`` is stdin and allowed).

    A FIFO with no writer would block ``open()`` forever; it is opened non-blocking and
    checked with ``fstat`` instead.
    """
    import os
    import stat

    if path == "-":
        return
    shown = _shown(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise InputError(f"cannot read {what} {shown}: {exc.strerror or exc}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"cannot read {what} {shown}: not a regular file (FIFOs, devices and sockets are "
                             "refused)")
    finally:
        os.close(fd)


def validate_args(args: argparse.Namespace) -> None:
    """Refuse impossible values of options shared by several commands, before any work (exit 2)."""
    for option in ("timeout", "lock_timeout"):
        value = getattr(args, option, None)
        if isinstance(value, float | int):
            check_seconds(value, "--" + option.replace("_", "-"))
    vm = getattr(args, "vm", None)
    if isinstance(vm, str):
        check_vm(vm)
    master_key = getattr(args, "master_key", None)
    if isinstance(master_key, str):
        check_regular_file(master_key, "--master-key file")
