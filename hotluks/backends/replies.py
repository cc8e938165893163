"""The shape of every monitor reply hotluks reads, checked where it enters (pure).

A monitor is QEMU, but the socket may belong to something else (a proxy, a wrong path, a
broken or hostile process). hotluks indexes into replies (``entry["node-name"]``,
``int(dev["slot"])``): a reply of the wrong shape would surface as a ``TypeError`` deep in
the planner. :func:`checked` turns it into :class:`~hotluks.errors.MalformedReply` (a
``BackendError``) at the backend, so the runner's phases apply as for any other monitor
failure: exit 2 before the first change to the VM, rollback (1) or repair (3) after it.
Only what hotluks uses is checked; extra keys are ignored, as QEMU adds fields over time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hotluks.errors import MalformedReply

#: ``query-pci`` bridges nest; QEMU allows a handful of levels (256 buses in all)
MAX_PCI_DEPTH = 32
Check = Callable[[Any], str | None]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _objects(value: Any, what: str, fields: dict[str, Callable[[Any], bool]], required: tuple[str, ...] = (),
             each: Check | None = None) -> str | None:
    """``value`` is a list of objects whose ``fields`` (when present) pass, with ``required`` ones present."""
    if not isinstance(value, list):
        return f"expected a list of {what}, got {_kind(value)}"
    for index, entry in enumerate(value):
        if not isinstance(entry, dict):
            return f"entry {index} is {_kind(entry)}, not an object"
        for key in required:
            if key not in entry:
                return f"entry {index} has no {key!r}"
        for key, ok in fields.items():
            if key in entry and not ok(entry[key]):
                return f"entry {index}: {key!r} is {_kind(entry[key])} ({str(entry[key])[:40]!r})"
        problem = each(entry) if each is not None else None
        if problem:
            return f"entry {index}: {problem}"
    return None


def _str(value: Any) -> bool:
    return isinstance(value, str)


def _count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _image(value: Any) -> bool:
    return isinstance(value, dict) and _count(value.get("virtual-size", 0))


def _block_nodes(value: Any) -> str | None:
    return _objects(value, "block nodes", {"node-name": _str, "image": _image}, ("node-name",))


def _qom_list(value: Any) -> str | None:
    return _objects(value, "properties", {"name": _str, "type": _str}, ("name", "type"))


def _pci_devices(value: Any, depth: int) -> str | None:
    if depth > MAX_PCI_DEPTH:
        return f"PCI bridges nested over {MAX_PCI_DEPTH} deep"

    def bridge(device: dict[str, Any]) -> str | None:
        inner = device.get("pci_bridge")
        if inner is None:
            return None
        if not isinstance(inner, dict):
            return f"'pci_bridge' is {_kind(inner)}"
        return _pci_devices(inner.get("devices", []), depth + 1)

    return _objects(value, "PCI devices", {"slot": _count, "bus": _count, "qdev_id": _str}, each=bridge)


def _query_pci(value: Any) -> str | None:
    return _objects(value, "PCI buses", {"bus": _count},
                    each=lambda bus: _pci_devices(bus.get("devices", []), 0))


def _fdsets(value: Any) -> str | None:
    return _objects(value, "fdsets", {"fdset-id": _count}, ("fdset-id",),
                    lambda s: _objects(s.get("fds", []), "descriptors", {"fd": _is_int, "opaque": _str}))


def _version(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"expected an object, got {_kind(value)}"
    qemu = value.get("qemu")
    if not isinstance(qemu, dict) or not all(_count(qemu.get(k)) for k in ("major", "minor", "micro")):
        return "'qemu' is not an object of numbers major, minor, micro"
    if not _str(value.get("package", "")):
        return "'package' is not a string"
    return None


def _schema(value: Any) -> str | None:
    return _objects(value, "schema entities", {"name": _str}, ("name",))


def _object(value: Any) -> str | None:
    return None if isinstance(value, dict) else f"expected an object, got {_kind(value)}"


def _list(value: Any) -> str | None:
    return None if isinstance(value, list) else f"expected a list, got {_kind(value)}"


def _add_fd(value: Any) -> str | None:
    if not isinstance(value, dict) or not _count(value.get("fdset-id")) or not _is_int(value.get("fd")):
        return "expected an object with numbers 'fdset-id' and 'fd'"
    return None


CHECKS: dict[str, Check] = {
    "query-named-block-nodes": _block_nodes,
    "qom-list": _qom_list,
    "query-pci": _query_pci,
    "query-fdsets": _fdsets,
    "query-version": _version,
    "query-qmp-schema": _schema,
    "query-uuid": _object,
    "query-cpus-fast": _list,
    "add-fd": _add_fd,
    "human-monitor-command": lambda v: None if isinstance(v, str) else f"expected a string, got {_kind(v)}",
    # commands that change the VM answer {} (a value here means the peer is not the QEMU we think)
    **{c: _object for c in ("object-add", "object-del", "blockdev-add", "blockdev-del", "device_add", "device_del",
                            "remove-fd", "block_resize")},
}


def checked(command: str, value: Any) -> Any:
    """``value`` (the ``return`` of ``command``) when it has the shape hotluks reads; else MalformedReply."""
    check = CHECKS.get(command)
    problem = check(value) if check is not None else None
    if problem:
        raise MalformedReply(f"{command}: malformed reply from the monitor: {problem}")
    return value


def expect(command: str, value: Any, kind: type, what: str) -> Any:
    """``value`` when it is a ``kind`` (a ``qom-get`` property, …); else MalformedReply naming ``what``."""
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MalformedReply(f"{command}: malformed reply from the monitor: {what} is {_kind(value)}")
    return value
