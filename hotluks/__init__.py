"""hotluks: plug LUKS-encrypted disks into running QEMU VMs, all or nothing.

The public API is imported lazily so that ``import hotluks`` stays cheap (no :mod:`logging`).
As a library hotluks never configures logging: its loggers (``hotluks.*``) end in a
``NullHandler`` (:mod:`hotluks.log`, imported by every module that logs) until the
application configures its own (the CLI does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Disk": "hotluks.model",
    "Plan": "hotluks.plan.steps",
    "build_plan": "hotluks.plan.planner",
    "connect": "hotluks.api",
    "aconnect": "hotluks.api",
    "errors": "hotluks.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from hotluks import errors
    from hotluks.api import aconnect, connect
    from hotluks.model import Disk
    from hotluks.plan.planner import build_plan
    from hotluks.plan.steps import Plan

__all__ = ["Disk", "Plan", "build_plan", "connect", "aconnect", "errors", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hotluks' has no attribute {name!r}")
    import importlib

    if module == f"hotluks.{name}":
        return importlib.import_module(module)
    return getattr(importlib.import_module(module), name)
