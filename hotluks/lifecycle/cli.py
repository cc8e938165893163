"""``hotluks cold-cmdline --format libvirt``: the shell around :mod:`hotluks.lifecycle.libvirt_cmdline`."""

from __future__ import annotations

import argparse
from pathlib import Path

from hotluks.errors import InputError
from hotluks.model import Disk
from hotluks.plan.steps import Plan


def print_libvirt_commandline(disk: Disk, plan: Plan, args: argparse.Namespace) -> int:
    """Print the ``<qemu:commandline>`` block; secrets come from ``--secret`` files, sealed with ``--key-file``."""
    from hotluks.cli.common import read_secrets
    from hotluks.lifecycle.libvirt_cmdline import (
        commandline_argv,
        commandline_xml,
        default_qemu_user,
        ensure_key_file,
        require_fixed_address,
    )

    if not args.key_file:
        raise InputError("--format libvirt needs --key-file FILE (the key QEMU unseals the secrets with)")
    if args.inline_secrets:
        raise InputError("--format libvirt never inlines secrets in clear text; drop --inline-secrets")
    require_fixed_address(disk, placed=args.pci_bus is not None)
    values = read_secrets(args.secret)
    key_file = Path(args.key_file).absolute()
    key = ensure_key_file(key_file, args.qemu_user or default_qemu_user())
    print(commandline_xml(commandline_argv(plan, values, key, str(key_file))), end="")
    return 0
