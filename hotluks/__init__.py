"""hotluks: plug LUKS-encrypted disks into running QEMU VMs, all or nothing.

The public API is imported lazily so that ``import hotluks`` stays cheap.
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
}

if TYPE_CHECKING:  # pragma: no cover
    from hotluks.api import aconnect, connect
    from hotluks.model import Disk
    from hotluks.plan.planner import build_plan
    from hotluks.plan.steps import Plan

__all__ = ["Disk", "Plan", "build_plan", "connect", "aconnect", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hotluks' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
