"""One versioned shape for every ``--json`` output (``"format": "hotluks/1"``), errors included.

Every document is an object with ``format``, ``command`` and ``ok``; the rest is
the command's payload with snake_case keys. QMP data (``arguments``, ``undo``,
``commands``) is QEMU's and keeps QEMU's spelling. A JSON Schema per command
ships in :mod:`hotluks.schemas` (``hotluks/schemas/<command>.json``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

FORMAT = "hotluks/1"
#: keys whose values are QEMU's own data: their inner keys are left as QEMU spells them
QMP_KEYS = frozenset({"arguments", "undo", "commands", "limits"})


def snake_keys(value: Any) -> Any:
    """``value`` with every object key in snake_case (``top-node`` → ``top_node``), QMP data untouched."""
    if isinstance(value, Mapping):
        return {str(k).replace("-", "_"): (v if k in QMP_KEYS else snake_keys(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [snake_keys(v) for v in value]
    return value


def envelope(command: str, payload: Mapping[str, Any], *, ok: bool | None = None) -> dict[str, Any]:
    """The ``hotluks/1`` document for ``command`` around ``payload`` (its own ``ok`` is kept, else True)."""
    body = snake_keys(payload)
    own_ok = body.pop("ok", True)
    return {"format": FORMAT, "command": command, "ok": bool(own_ok if ok is None else ok), **body}


def error_envelope(command: str, exc: BaseException, exit_code: int) -> dict[str, Any]:
    """An error as a ``hotluks/1`` document (the message is the one printed on stderr)."""
    return {"format": FORMAT, "command": command, "ok": False,
            "error": {"type": type(exc).__name__, "message": str(exc), "exit_code": exit_code}}


def emit(command: str, payload: Mapping[str, Any]) -> None:
    """Print ``payload`` as the ``hotluks/1`` document of ``command`` on stdout."""
    write(envelope(command, payload))


def write(doc: Mapping[str, Any]) -> None:
    """Print ``doc``; under ``HOTLUKS_JSON_CHECK`` (the test suite) only once it matches its schema."""
    import os

    log = os.environ.get("HOTLUKS_JSON_CHECK")
    if log:
        from hotluks.cli.jsoncheck import check

        check(doc, log)
    json.dump(doc, sys.stdout, indent=2)
    sys.stdout.write("\n")
    sys.stdout.flush()


def command_name(args: Any) -> str:
    """``plan``, ``attach``, … or ``luks dump`` for nested commands (as the schema files are named)."""
    name = str(getattr(args, "command", None) or "hotluks")
    action = getattr(args, "luks_command", None)
    return f"{name} {action}" if action else name


def schema_name(command: str) -> str:
    """The schema file for a command: ``luks dump`` → ``luks-dump.json``."""
    return command.replace(" ", "-") + ".json"
