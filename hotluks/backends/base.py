"""The small async interface every monitor backend implements.

A backend executes QMP commands and delivers QMP events. Everything above it
(runner, capability probe, status) speaks only this interface.
"""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hotluks.errors import BackendError
from hotluks.lifecycle.coverage import Moment
from hotluks.secrets import MasterKey

__all__ = ["Event", "EventQueue", "MasterKey", "MonitorBackend", "QMPArgs", "QMPCommandError", "VMIdentity"]

QMPArgs = Mapping[str, Any]
Event = dict[str, Any]


class QMPCommandError(BackendError):
    """QEMU answered a command with an error; carries QEMU's class and message."""

    def __init__(self, command: str, error_class: str, desc: str):
        self.command = command
        self.error_class = error_class
        self.desc = desc
        super().__init__(f"{command}: {desc}")


@dataclass(frozen=True)
class VMIdentity:
    """Who a VM is, independent of how it was reached.

    ``key`` names the VM (a libvirt domain UUID, or the QEMU process behind a bare QMP
    socket): journals and locks are keyed by it, so every socket of one QEMU and every
    URI alias of one domain share them. ``instance`` names the running QEMU process
    (pid and start time): a record written under another instance is ``lost``.
    """

    key: str
    instance: str


class EventQueue:
    """FIFO of QMP events whose name is in ``names`` (all events when empty)."""

    def __init__(self, names: Iterable[str] = ()):
        self.names = frozenset(names)
        self._queue: asyncio.Queue[Event] = asyncio.Queue()

    def accepts(self, event: Event) -> bool:
        return not self.names or event.get("event") in self.names

    def put(self, event: Event) -> None:
        if self.accepts(event):
            self._queue.put_nowait(event)

    async def get(self, timeout: float) -> Event:
        """Next matching event; ``TimeoutError`` after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()


class MonitorBackend(ABC):
    """One connection to one VM's QEMU monitor.

    The contract above the QMP commands themselves, declared here so callers never probe:

    - ``passes_fds``: files go to QEMU as descriptors through :meth:`execute_with_fds`
      (``add-fd``) rather than as paths QEMU opens itself;
    - ``can_seal``: a master key QEMU holds is known, so secrets reach the monitor only
      as AES-256-CBC ciphertext; without one they travel as base64 over the monitor
      channel, which no backend exposes elsewhere (no argv, no history file, no log);
    - ``stores_secrets``: :meth:`secret_value` can read secrets from a management layer;
    - :meth:`identity`: the VM and its running QEMU, however it was reached.
    """

    #: short backend name: "qmp", "libvirt" or "virsh"
    name: str = "?"
    #: how the user named the VM (domain name or socket path)
    vm: str = "?"
    #: the master key QEMU already holds for encrypting secrets, if known
    master_key: MasterKey | None = None
    #: whether files are handed to QEMU as open descriptors (``execute_with_fds``) rather than
    #: paths: libvirt's QEMU cannot open paths libvirt did not set up (user, namespace, MAC)
    passes_fds: bool = False
    #: whether :meth:`secret_value` reads a secret store (libvirt's) rather than always None
    stores_secrets: bool = False

    def __init__(self) -> None:
        self._queues: list[EventQueue] = []

    @abstractmethod
    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        """Run one QMP command; raise :class:`QMPCommandError` on a QEMU error."""

    async def close(self) -> None:
        """Release the connection."""

    @property
    def can_seal(self) -> bool:
        """True when secrets can reach QEMU only as ciphertext under a key it already holds."""
        return self.master_key is not None

    async def secret_value(self, ref: str) -> bytes | None:
        """The value of a secret stored by the management layer (libvirt), if any."""
        return None

    async def persistent_xml(self) -> str | None:
        """The management layer's persistent definition of the VM (libvirt: ``dumpxml --inactive``), if any."""
        return None

    async def moments(self) -> list[Moment]:
        """The management layer's snapshots, checkpoints and backup jobs of the VM (libvirt), if any."""
        return []

    @property
    def vm_key(self) -> str:
        """A stable identifier for the VM, used for locks and journals."""
        return f"{self.name}-{self.vm}"

    async def identity(self) -> VMIdentity:
        """The VM and its running QEMU instance (see :class:`VMIdentity`)."""
        return VMIdentity(self.vm_key, "")

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        """Run one QMP command passing open descriptors (SCM_RIGHTS); only when ``passes_fds``."""
        raise BackendError(f"the {self.name} backend cannot pass file descriptors")

    @contextlib.contextmanager
    def events(self, names: Iterable[str] = ()) -> Iterator[EventQueue]:
        """Collect events named ``names`` while the block runs (register before acting)."""
        queue = EventQueue(names)
        self._queues.append(queue)
        try:
            yield queue
        finally:
            self._queues.remove(queue)

    def _dispatch_event(self, event: Event) -> None:
        """Called by subclasses (on the event loop thread) for every event received."""
        for queue in list(self._queues):
            queue.put(event)

    async def __aenter__(self) -> MonitorBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
