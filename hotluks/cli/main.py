"""``hotluks`` entry point: argument parsing and error-to-exit-code mapping.

Command modules are imported here but must keep their own heavy imports
(lxml, cryptography, qemu.qmp, libvirt) inside their handlers so that start-up
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from hotluks.errors import HotluksError

# Modules that define ``register(subparsers)``; missing ones are skipped so the
# CLI keeps working while a command group is being built.
COMMAND_MODULES = (
    "hotluks.cli.plan",
    "hotluks.cli.vm",
    "hotluks.cli.luks",
    "hotluks.cli.rotate",
    "hotluks.cli.serve",
    "hotluks.cli.demo",
    "hotluks.cli.hook",
    "hotluks.cli.placement",
    "hotluks.cli.persist",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full ``hotluks`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="hotluks",
        description="Plug LUKS-encrypted disks (detached headers, librbd) into running QEMU VMs.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    from hotluks import __version__

    parser.add_argument("--version", action="version", version=f"hotluks {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="hotluks: %(levelname)s: %(message)s")
    try:
        code: int = args.func(args)
    except HotluksError as exc:
        print(f"hotluks: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("hotluks: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # a bug, not bad input: say so without a traceback unless -vv
        if args.verbose >= 2:
            raise
        print(f"hotluks: internal error: {type(exc).__name__}: {exc} (run with -vv for a traceback)",
              file=sys.stderr)
        return 70
    return code


def entry() -> None:
    """Console-script wrapper."""
    sys.exit(main())


if __name__ == "__main__":
    entry()
