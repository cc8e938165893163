"""Cold-boot QEMU arguments (``-object``/``-blockdev``/``-device``) for a plan.

Values use QEMU's JSON syntax. Secrets reference files (``"file": …``) unless the
caller explicitly asks to inline them.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from typing import Any

from hotluks.errors import SecretError
from hotluks.plan.steps import Plan, Step
from hotluks.secrets import SecretValue, lookup, secret_properties

OPTION_BY_COMMAND = {"object-add": "-object", "blockdev-add": "-blockdev", "device_add": "-device"}


def cold_boot_args(
    plan: Plan,
    secret_files: Mapping[str, str],
    inline: Mapping[str, SecretValue] | None = None,
    master_key: tuple[str, bytes] | None = None,
) -> list[str]:
    """Argv fragment for ``plan``. ``inline`` (explicit opt-in) embeds secret values,
    sealed under ``master_key`` (``(object id, 32-byte key)``) when given."""
    argv: list[str] = []
    missing = []
    for step in plan.steps:
        props = _properties(step)
        if step.secret is not None:
            binding = step.secret
            if inline is not None and (value := lookup(inline, binding)) is not None:
                props.update(secret_properties(binding, value, master_key))
            else:
                path = next((secret_files[k] for k in (binding.ref.uuid, binding.ref.usage)
                             if k is not None and k in secret_files), None)
                if path is None:
                    missing.append(binding.ref.key)
                    continue
                props["file"] = path
                if binding.encoding == "base64":
                    props["format"] = "base64"
        argv += [OPTION_BY_COMMAND[step.command], json.dumps(props, separators=(",", ":"))]
    if missing:
        raise SecretError("cold-boot arguments need a file for each secret: pass "
                          + " ".join(f"--secret {k}=FILE" for k in missing))
    return argv


def _properties(step: Step) -> dict[str, Any]:
    args = step.qmp()["arguments"]
    if step.command == "device_add":
        return {"driver": args.pop("driver"), **args}
    return dict(args)


def as_shell(argv: list[str]) -> str:
    """One option per line, safely quoted for a POSIX shell."""
    pairs = [f"{argv[i]} {shlex.quote(argv[i + 1])}" for i in range(0, len(argv), 2)]
    return " \\\n".join(pairs)
