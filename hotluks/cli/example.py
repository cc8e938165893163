"""``hotluks example NAME``: print a shipped ``<disk>`` example (``--list`` names them)."""

from __future__ import annotations

import argparse
import os
import sys

from hotluks.errors import InputError

#: a plain path, as for the RelaxNG grammar: importlib.resources would import zipfile and pathlib
EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def example_names() -> list[str]:
    """The shipped examples (``hotluks/examples/*.xml``) by name, sorted."""
    return sorted(name[:-4] for name in os.listdir(EXAMPLES) if name.endswith(".xml"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("example", help="print a shipped <disk> example (try: hotluks example NAME | hotluks plan -)",
                       description="Print one of the <disk> examples shipped with hotluks, to adapt or to pipe "
                                   "into `hotluks plan -`.")
    p.add_argument("name", metavar="NAME", nargs="?", help="example name (see --list)")
    p.add_argument("--list", action="store_true", help="list the example names")
    p.add_argument("--json", action="store_true", help="with --list: the names as a hotluks/1 document")
    p.set_defaults(func=cmd_example)


def cmd_example(args: argparse.Namespace) -> int:
    names = example_names()
    if args.list or args.name is None:
        if args.json:
            from hotluks.cli.output import emit

            emit("example", {"examples": names})
        elif args.name is None and not args.list:
            raise InputError("give an example NAME, or --list to see them: " + ", ".join(names))
        else:
            print("\n".join(names))
        return 0
    name = args.name.removesuffix(".xml")
    if name not in names:
        raise InputError(f"no example named {args.name!r}; choose one of: {', '.join(names)}")
    with open(os.path.join(EXAMPLES, f"{name}.xml"), encoding="utf-8") as fh:
        sys.stdout.write(fh.read())
    return 0
