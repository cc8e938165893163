"""Plan data: ordered QMP steps, each with the command that undoes it."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from hotluks.model import Disk, SecretRef

StepKind = Literal["secret", "node", "device", "fd"]


@dataclass(frozen=True)
class FdSource:
    """The file an ``add-fd`` step opens and hands to QEMU (with QEMU's own open flags)."""

    path: str
    read_only: bool = False
    direct: bool = False


@dataclass(frozen=True)
class SecretBinding:
    """How a secret object gets its value: which secret, and how its bytes are encoded.

    ``encoding='raw'`` is a passphrase used byte for byte; ``'base64'`` is a key
    that users hold as base64 text (a Ceph key) and QEMU needs decoded.
    """

    ref: SecretRef
    encoding: Literal["raw", "base64"] = "raw"


@dataclass(frozen=True)
class Step:
    """One QMP command plus its undo. ``arguments`` never hold secret values."""

    kind: StepKind
    role: str
    command: str
    arguments: dict[str, Any]
    undo_command: str
    undo_arguments: dict[str, Any]
    secret: SecretBinding | None = None
    #: for ``kind='fd'``: the file whose open descriptor rides along with ``add-fd``
    fd_source: FdSource | None = None

    @property
    def name(self) -> str:
        """The id or node-name this step creates (``fdset-N`` for a descriptor set)."""
        args = self.arguments
        if self.kind == "fd":
            return f"fdset-{args['fdset-id']}"
        return str(args.get("node-name") or args.get("id"))

    def qmp(self) -> dict[str, Any]:
        """``{"execute", "arguments"}`` without secret values (a deep copy)."""
        return {"execute": self.command, "arguments": copy.deepcopy(self.arguments)}

    def undo_qmp(self) -> dict[str, Any]:
        return {"execute": self.undo_command, "arguments": copy.deepcopy(self.undo_arguments)}


@dataclass(frozen=True)
class Plan:
    """The ordered steps that attach ``disk``; undo runs them backwards."""

    disk: Disk
    steps: tuple[Step, ...]

    @property
    def device_id(self) -> str:
        return next(s.name for s in self.steps if s.kind == "device")

    @property
    def top_node(self) -> str:
        """The node the guest device reads from."""
        return str(next(s for s in self.steps if s.kind == "device").arguments["drive"])

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if s.kind == "node")

    @property
    def object_ids(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps if s.kind == "secret")

    @property
    def secrets(self) -> tuple[SecretBinding, ...]:
        return tuple(s.secret for s in self.steps if s.secret is not None)

    def undo_order(self) -> tuple[Step, ...]:
        """Steps in the order they are undone (device first, secrets last)."""
        return tuple(reversed(self.steps))
