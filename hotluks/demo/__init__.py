"""``hotluks demo``: a throwaway VM, a detached-header LUKS disk hot-plugged into it, the guest reading it.

The demo's parts live here and nowhere else in the package: the runner (:mod:`.runner`),
the tiny Linux guest it boots (:mod:`.guest`: Debian kernel + busybox initramfs, serial
agent) and the QEMU launcher (:mod:`.qemu`). The test suite reuses the guest and launcher.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hotluks.demo.runner import DemoReport, DemoStep, run_demo

__all__ = ["DemoReport", "DemoStep", "run_demo"]


def __getattr__(name: str) -> Any:
    """The runner's names, imported when first asked for (``hotluks.demo.guest`` stays light)."""
    if name in __all__:
        from hotluks.demo import runner

        return getattr(runner, name)
    raise AttributeError(name)
