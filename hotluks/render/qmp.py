"""QMP commands of a plan, with secret values bound (to send) or redacted (to show)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hotluks.errors import SecretError
from hotluks.plan.steps import Plan, Step
from hotluks.secrets import REDACTED, SecretValue, lookup, secret_properties


def redacted_command(step: Step) -> dict[str, Any]:
    """The step as a QMP command, with a placeholder where the secret value goes."""
    cmd = step.qmp()
    if step.secret is not None:
        cmd["arguments"].update({"data": REDACTED, "format": "base64"})
    return cmd


def bound_command(step: Step, values: Mapping[str, SecretValue],
                  master_key: tuple[str, bytes] | None) -> dict[str, Any]:
    """The step as a QMP command ready to send (secret sealed if a master key is known)."""
    cmd = step.qmp()
    if step.secret is not None:
        value = lookup(values, step.secret)
        if value is None:
            raise SecretError(f"no value for {step.secret.ref.describe()}; pass --secret "
                              f"{step.secret.ref.key}=FILE")
        cmd["arguments"].update(secret_properties(step.secret, value, master_key))
    return cmd


def plan_json(plan: Plan) -> dict[str, Any]:
    """The ``plan --json`` document: steps with undo, secrets redacted."""
    disk = plan.disk
    return {
        "target": disk.target_dev,
        "bus": disk.bus,
        "shape": disk.shape,
        "device": plan.device_id,
        "top_node": plan.top_node,
        "secrets": [{"kind": b.ref.kind, "uuid": b.ref.uuid, "usage": b.ref.usage} for b in plan.secrets],
        "notes": list(disk.notes),
        "steps": [
            {**redacted_command(step), "role": step.role, "undo": step.undo_qmp()}
            for step in plan.steps
        ],
    }
