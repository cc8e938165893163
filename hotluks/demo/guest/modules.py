"""Kernel module closure from ``modules.dep`` (pure).

``modules.dep`` lines look like ``kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko ...``.
Module names normalise ``-`` to ``_`` and drop the ``.ko[.xz|.gz|.zst]`` suffix, as the kernel does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hotluks.demo.guest.errors import GuestUnavailableError

MODULE_SUFFIXES = (".ko.xz", ".ko.gz", ".ko.zst", ".ko")


def module_name(path: str) -> str:
    """``kernel/lib/crc-t10dif.ko.xz`` → ``crc_t10dif``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


def parse_modules_dep(text: str) -> dict[str, tuple[str, ...]]:
    """Map each module path to the paths it depends on, in file order."""
    deps: dict[str, tuple[str, ...]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        head, sep, tail = line.partition(":")
        if not sep:
            continue
        deps[head.strip()] = tuple(tail.split())
    return deps


def parse_builtin(text: str) -> frozenset[str]:
    """Names of the modules listed in ``modules.builtin``."""
    return frozenset(module_name(line.strip()) for line in text.splitlines() if line.strip())


def load_order(deps: Mapping[str, tuple[str, ...]], wanted: Iterable[str],
               builtin: frozenset[str] = frozenset()) -> list[str]:
    """Paths of ``wanted`` modules and everything they need, dependencies first.

    Built-in modules are skipped. A wanted module that is neither in ``deps`` nor
    built in raises :class:`GuestUnavailableError`.
    """
    by_name = {module_name(path): path for path in deps}
    order: list[str] = []
    done: set[str] = set()
    active: set[str] = set()

    def visit(path: str) -> None:
        if path in done:
            return
        if path in active:
            raise GuestUnavailableError(f"modules.dep has a dependency cycle through {path}")
        active.add(path)
        for dep in deps.get(path, ()):
            visit(dep)
        active.discard(path)
        done.add(path)
        order.append(path)

    for want in wanted:
        name = want.replace("-", "_")
        if name in builtin:
            continue
        path = by_name.get(name)
        if path is None:
            raise GuestUnavailableError(f"kernel module {want!r} is neither in modules.dep nor built in")
        visit(path)
    return order
