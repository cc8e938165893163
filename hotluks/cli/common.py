"""Helpers shared by command modules (kept light: no heavy imports at module level)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from hotluks.errors import InputError

if TYPE_CHECKING:
    from hotluks.model import Disk
    from hotluks.secrets import SecretValue

#: longest wait any command accepts (a day): a typo like 3e9 is refused, not slept on
MAX_TIMEOUT = 86400.0
#: libvirt domain names become file names (state directory): NAME_MAX bytes at most
MAX_VM_NAME = 255
#: AF_UNIX sun_path holds 108 bytes including the terminating NUL
MAX_SOCKET_PATH = 107


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


def check_timeout(value: float, option: str = "--timeout") -> None:
    import math

    if not math.isfinite(value) or value <= 0 or value > MAX_TIMEOUT:
        raise InputError(f"{option} {value!r}: give a number of seconds above 0 and at most {MAX_TIMEOUT:g}")


def check_vm(vm: str) -> None:
    """A libvirt domain name or a QMP socket path that could exist."""
    raw = vm.encode("utf-8", "surrogateescape")
    if not vm or any(not c.isprintable() for c in vm):
        raise InputError(f"VM {_shown(vm)!r}: empty or has control characters")
    path = vm.removeprefix("unix:")
    if "/" in vm:
        if len(path.encode("utf-8", "surrogateescape")) > MAX_SOCKET_PATH:
            raise InputError(f"QMP socket path {_shown(path)} is longer than a UNIX socket address can be "
                             f"({MAX_SOCKET_PATH} bytes)")
    elif len(raw) > MAX_VM_NAME:
        raise InputError(f"VM name is {len(raw)} bytes; a libvirt domain name is at most {MAX_VM_NAME}")


def validate_args(args: argparse.Namespace) -> None:
    """Refuse impossible values of options shared by several commands, before any work (exit 2)."""
    for option in ("timeout", "lock_timeout"):
        value = getattr(args, option, None)
        if isinstance(value, float | int):
            check_timeout(float(value), "--" + option.replace("_", "-"))
    vm = getattr(args, "vm", None)
    if isinstance(vm, str):
        check_vm(vm)
    master_key = getattr(args, "master_key", None)
    if isinstance(master_key, str):
        check_regular_file(master_key, "--master-key file")


def _shown(text: str) -> str:
    text = "".join(c if c.isprintable() else "?" for c in text.encode("utf-8", "backslashreplace").decode())
    return text if len(text) <= 200 else text[:120] + "…" + text[-60:]
