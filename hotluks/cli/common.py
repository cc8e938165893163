"""Helpers shared by command modules (kept light: no heavy imports at module level)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hotluks.model import Disk
    from hotluks.secrets import SecretValue


def load_disk(path: str) -> Disk:
    """Parse DISK.xml (``-`` reads stdin)."""
    from pathlib import Path

    from hotluks.xmlparse import MAX_XML_BYTES, parse_disk, read_disk_file

    if path == "-":
        return parse_disk(sys.stdin.buffer.read(MAX_XML_BYTES + 1), source="<stdin>")
    return read_disk_file(Path(path))


def add_secret_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--secret", action="append", default=[], metavar="KEY=FILE",
                        help="secret value from FILE, for the secret whose uuid or usage is KEY (repeatable)")


def secret_files(specs: list[str]) -> dict[str, str]:
    from hotluks.secrets import parse_secret_spec

    return dict(parse_secret_spec(s) for s in specs)


def read_secrets(specs: list[str]) -> dict[str, SecretValue]:
    from hotluks.secrets import read_secret_file

    return {key: read_secret_file(path) for key, path in secret_files(specs).items()}


def print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
