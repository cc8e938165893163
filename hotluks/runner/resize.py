"""``resize``: grow (or, with ``force``, shrink) a disk hotluks attached, through QMP ``block_resize``.

The node resized is the disk's top node (the one its device sits on) as recorded in the
journal when it was attached, never re-derived from XML. Resizing the top node is enough
for every shape: a ``luks`` node passes the new size plus its payload offset down to its
``file`` child (0 for a detached header: the payload grows by exactly the new size), a
qcow2 node (qcow2-native encryption, or the payload under a detached header) grows its
virtual size, a raw/protocol node its file, and filters pass it on.

Disks decrypted by librbd are refused (see :data:`LIBRBD_REFUSAL`), and a size QEMU reports
afterwards that is not the one asked for is an error (exit 3), never reported as success.

A resize is one QMP command without an undo: an interruption after it was sent lets it
finish (and the result is reported); a failure is re-checked against the size QEMU reports
afterwards — unchanged: exit 1, changed anyway: exit 3.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.errors import (
    HotluksError,
    Incomplete,
    InputError,
    MalformedReply,
    RefusedError,
    RolledBack,
    UnsupportedError,
)
from hotluks.log import get_logger
from hotluks.runner.journal import Record
from hotluks.runner.results import JSONResult

if TYPE_CHECKING:
    from hotluks.runner.operator import Operator

log = get_logger(__name__)

#: qemu-img's size suffixes (powers of 1024; ``B`` or none: bytes)
UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
SECTOR = 512
#: QEMU's rbd driver hands block_resize's size to rbd_resize as the raw image size, while the node shows
#: librbd's decrypted view (raw size minus the LUKS data offset): asked to grow by less than the offset, a
#: librbd-encrypted disk shrinks (seen with QEMU 10.0 on librbd 16.2; integration/ceph_runner checks it)
LIBRBD_REFUSAL = ("resize of a disk decrypted by librbd (engine='librbd') is not supported: QEMU's rbd driver "
                  "sets the raw image to the new size without counting librbd's LUKS header, so the disk would "
                  "end up smaller than asked, or shrink; detach it, `rbd resize` the image (new size + the "
                  "header's data offset), and attach it again")
MAX_SIZE = (1 << 63) - 1
_SIZE = re.compile(r"^([+-]?)([0-9]+)(?:\.([0-9]+))?\s*([A-Za-z]?)$")


@dataclass(frozen=True)
class SizeSpec:
    """A parsed SIZE argument: an absolute size in bytes, or a change (``+1G``/``-512M``)."""

    value: int
    relative: int = 0  # +1 grow by, -1 shrink by, 0 absolute

    def target(self, current: int) -> int:
        return current + self.relative * self.value if self.relative else self.value


def parse_size(text: str) -> SizeSpec:
    """``10G``, ``1.5G``, ``512M``, ``1073741824``, ``+1G``, ``-256M`` (suffixes as in qemu-img: powers of 1024)."""
    match = _SIZE.match(text.strip()) if isinstance(text, str) else None
    if match is None or match.group(4).upper() not in UNITS:
        raise InputError(f"invalid size {text!r}: give bytes or a number with K, M, G, T, P or E "
                         "(powers of 1024), optionally with + or - to grow or shrink by that much")
    sign, whole, frac, unit = match.groups()
    scale = UNITS[unit.upper()]
    value = int(whole) * scale
    if frac:
        value += int(frac) * scale // 10 ** len(frac)
    if value > MAX_SIZE:
        raise InputError(f"size {text!r} is too large")
    return SizeSpec(value, {"+": 1, "-": -1, "": 0}[sign])


def check_new_size(current: int, new: int, *, force: bool) -> None:
    """Refuse (exit 2) sizes QEMU cannot take or that lose data without ``force``."""
    if new <= 0:
        raise InputError(f"the new size must be positive (the disk has {current} bytes)")
    if new > MAX_SIZE:
        raise InputError("the new size is too large")
    if new % SECTOR:
        raise InputError(f"the new size {new} is not a multiple of {SECTOR} bytes (the guest sees whole sectors)")
    if new < current and not force:
        raise RefusedError(f"shrinking from {current} to {new} bytes discards the data past {new}: "
                           "refused without --force (the guest's file system must be shrunk first)")


@dataclass(frozen=True, eq=False)
class ResizeResult(JSONResult):
    """What a resize did: JSON keys vm, target, device, node, old_size, new_size, changed, seconds."""

    vm: str
    target: str
    device: str
    node: str
    old_size: int
    new_size: int
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return self.new_size != self.old_size

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "vm": self.vm, "target": self.target, "device": self.device, "node": self.node,
                "old_size": self.old_size, "new_size": self.new_size, "changed": self.changed,
                "seconds": round(self.seconds, 6)}


def top_node(record: Record) -> str:
    """The node the record's device sits on (its ``drive``), as planned and journaled at attach."""
    for step in record.steps:
        if step.kind == "device" and isinstance(step.arguments.get("drive"), str):
            return str(step.arguments["drive"])
    raise RefusedError(f"the record of {record.target} has no device on a block node: nothing to resize")


async def node_size(backend: MonitorBackend, node: str) -> int:
    """The virtual size QEMU reports for block node ``node``."""
    for entry in await backend.execute("query-named-block-nodes", {"flat": True}):
        if entry.get("node-name") == node:
            size = entry.get("image", {}).get("virtual-size")  # shapes checked by the backend
            if size is None:
                raise MalformedReply(f"query-named-block-nodes: malformed reply from the monitor: node {node} "
                                     "has no image size")
            return int(size)
    raise RefusedError(f"block node {node} is not in the VM: run `hotluks status` (and `hotluks repair`)")


async def resize(operator: Operator, target: str, size: SizeSpec | str | int, *, force: bool = False) -> ResizeResult:
    """Resize the disk attached on ``target`` of the operator's VM (under the VM's lock)."""
    spec = size if isinstance(size, SizeSpec) else SizeSpec(size) if isinstance(size, int) else parse_size(size)
    started = time.perf_counter()
    backend = operator.backend
    async with operator.attached(target) as (_, record):
        if record.shape.startswith("librbd"):
            raise UnsupportedError(LIBRBD_REFUSAL)
        node = top_node(record)
        old = await node_size(backend, node)
        new = spec.target(old)
        check_new_size(old, new, force=force)
        result = ResizeResult(backend.vm, target, record.device, node, old, new)
        if new == old:
            return result
        log.info("resizing %s (node %s) of %s from %d to %d bytes", target, node, backend.vm, old, new)
        await _send(backend, node, old, new)
        now = await node_size(backend, node)
        if now != new:
            raise Incomplete(f"block_resize of {node} to {new} bytes succeeded but QEMU now reports {now} bytes "
                             f"(it had {old})")
        return ResizeResult(backend.vm, target, record.device, node, old, now, time.perf_counter() - started)


async def _send(backend: MonitorBackend, node: str, old: int, new: int) -> None:
    """``block_resize``; on failure say whether the disk changed (1: unchanged, 3: changed)."""
    sending = asyncio.ensure_future(backend.execute("block_resize", {"node-name": node, "size": new}))
    try:
        try:
            await asyncio.shield(sending)
        except asyncio.CancelledError:  # one command without an undo: let it finish, then report it
            log.warning("interrupted while QEMU resizes %s: letting the resize finish", node)
            await sending
    except (HotluksError, OSError) as exc:
        what = f"{exc.desc}" if isinstance(exc, QMPCommandError) else str(exc)
        try:
            now = await node_size(backend, node)
        except (HotluksError, OSError):
            raise Incomplete(f"block_resize of {node} to {new} bytes failed: {what}; its size is now unknown "
                             "(query it with `hotluks status` or query-named-block-nodes)") from None
        if now == old:
            raise RolledBack(f"block_resize of {node} to {new} bytes failed: {what}; the disk is unchanged "
                             f"({old} bytes)") from None
        raise Incomplete(f"block_resize of {node} to {new} bytes failed: {what}; the disk now has {now} "
                         "bytes") from None
