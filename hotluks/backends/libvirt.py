"""QMP through libvirt-python (``virDomainQemuMonitorCommand`` + QEMU monitor events).

libvirt marks a domain "tainted" the first time a raw monitor command is sent
to it: ``Domain id=N is tainted: custom-monitor`` in the domain's log
(``/var/log/libvirt/qemu/NAME.log``) and as a warning in libvirtd's log; the
domain keeps running normally. libvirt also does not know about
devices added this way: they do not appear in ``virsh dumpxml`` and vanish on
the next cold boot, which is what a hot-plug tool built on the monitor implies.

Blocking libvirt calls run in worker threads; events come from libvirt's
default event-loop implementation, run by one daemon thread per process, and
are handed to the asyncio loop with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any

from hotluks.backends.base import MasterKey, MonitorBackend, QMPArgs, VMIdentity
from hotluks.backends.libvirt_shared import (
    DEFAULT_URI,
    MASTER_KEY_ID,
    SECRET_USAGES,
    command_json,
    decode_master_key,
    domain_identity,
    domain_key,
    no_domain,
    not_running,
    parse_reply,
    private_secret_message,
    probe_master_key,
    secret_uuid,
    shape_event,
)
from hotluks.errors import BackendError, SecretError
from hotluks.lifecycle.coverage import Moment, completed_backup, parse_backup, parse_checkpoint, parse_snapshot

__all__ = ["DEFAULT_URI", "MASTER_KEY_ID", "LibvirtBackend", "command_json", "decode_master_key",
           "event_from_libvirt", "parse_reply", "private_secret_message", "probe_master_key"]

event_from_libvirt = shape_event

_event_loop_lock = threading.Lock()
_event_loop_started = False


def ensure_event_loop() -> None:
    """Register libvirt's default event implementation and run it in a daemon thread (once).

    Also silences libvirt's habit of printing every error on stderr: errors
    reach us as exceptions, which become hotluks errors with clear text.
    """
    global _event_loop_started
    import libvirt

    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def libvirt_message(exc: Exception) -> str:
    """The text of a libvirtError (its last-error message, else its string form)."""
    get = getattr(exc, "get_error_message", None)
    message = get() if get is not None else None
    return str(message or exc or type(exc).__name__)


def lookup_domain(conn: Any, name: str) -> Any:
    """A domain by name, else by UUID (as virsh accepts both)."""
    import libvirt

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        uuid = secret_uuid(name)
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN or uuid is None:
            raise
    return conn.lookupByUUIDString(uuid)


class LibvirtBackend(MonitorBackend):
    """One libvirt connection to one domain; monitor commands taint the domain (``custom-monitor``)."""

    name = "libvirt"
    passes_fds = True
    stores_secrets = True

    def __init__(self, domain: str, uri: str = DEFAULT_URI, *, master_key: MasterKey | None = None,
                 timeout: float = 10.0, probe_master_key: bool = True):
        super().__init__()
        self.vm = domain
        self.uri = uri
        self.master_key = master_key
        self.timeout = timeout
        self._probe_key = probe_master_key and master_key is None
        self._conn: Any = None
        self._dom: Any = None
        self._callback_id: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: the domain's name and UUID as libvirt knows them (set by connect)
        self.domain_name: str | None = None
        self.domain_uuid: str | None = None

    @property
    def vm_key(self) -> str:
        """The domain's UUID once connected (every URI alias, name or UUID alike), else ``libvirt-URI-NAME``."""
        return domain_key(self.domain_uuid, self.uri, self.domain_name or self.vm)

    async def identity(self) -> VMIdentity:
        """The domain's UUID and its running QEMU (asked each time: a domain restarts under one connection)."""
        if self._dom is None or self.domain_uuid is None:
            raise BackendError("libvirt backend is not connected")
        dom = self._dom
        domain_id = await asyncio.to_thread(dom.ID)
        return await domain_identity(self, self.domain_uuid, int(domain_id))

    async def connect(self) -> LibvirtBackend:
        """Open the connection, find the domain, subscribe to its monitor events, probe masterKey0."""
        import libvirt
        import libvirt_qemu

        ensure_event_loop()
        self._loop = asyncio.get_running_loop()

        def open_and_lookup() -> tuple[Any, Any]:
            conn = libvirt.open(self.uri)
            try:
                dom = lookup_domain(conn, self.vm)
                if not dom.isActive():
                    raise not_running(self.vm, self.uri)
            except BaseException:
                conn.close()
                raise
            return conn, dom

        try:
            async with asyncio.timeout(self.timeout):
                self._conn, self._dom = await asyncio.to_thread(open_and_lookup)
                self.domain_name = str(self._dom.name())
                self.domain_uuid = str(self._dom.UUIDString())
        except TimeoutError:
            raise BackendError(f"libvirt at {self.uri} did not answer within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise no_domain(self.vm, self.uri) from None
            raise BackendError(f"cannot connect to libvirt at {self.uri}: {libvirt_message(exc)}") from None
        try:
            self._callback_id = libvirt_qemu.qemuMonitorEventRegister(
                self._conn, self._dom, None, self._on_event, None, 0)
            if self._probe_key:
                self.master_key = await probe_master_key(self)
        except BaseException:
            await self.close()
            raise
        return self

    def _on_event(self, conn: Any, dom: Any, event: str, seconds: int, micros: int,
                  details: str | None, opaque: Any) -> None:
        """Runs on libvirt's event thread."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(self._dispatch_event, shape_event(event, seconds, micros, details))

    async def _monitor(self, command: str, arguments: QMPArgs | None, call: Callable[[Any, str], Any]) -> Any:
        """``call(domain, command_json)`` in a worker thread, bounded by the timeout; libvirt errors typed."""
        import libvirt

        if self._dom is None:
            raise BackendError("libvirt backend is not connected")
        dom, text = self._dom, command_json(command, arguments)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(call, dom, text)
        except TimeoutError:
            raise BackendError(f"{command}: no answer from libvirt within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            # libvirt's message names the failure (domain gone, daemon gone); it never echoes our JSON
            raise BackendError(f"{command}: libvirt failed on domain {self.vm!r}: {libvirt_message(exc)}") from None

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        import libvirt_qemu

        reply = await self._monitor(command, arguments, lambda dom, text: libvirt_qemu.qemuMonitorCommand(dom, text, 0))
        return parse_reply(command, str(reply))

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        """Run a command that receives open file descriptors (``add-fd``, ``getfd``).

        libvirt runs QEMU in a private ``/dev`` (mount namespace) under a device
        cgroup and as ``libvirt-qemu``: a block device or file libvirt did not set
        up cannot be opened by path from the monitor. hotluks opens it and passes
        the descriptor (``add-fd`` → ``/dev/fdset/N``). Our copies stay open: the
        caller closes them.
        """
        import libvirt_qemu

        reply, returned = await self._monitor(
            command, arguments, lambda dom, text: libvirt_qemu.qemuMonitorCommandWithFiles(dom, text, list(fds), 0))
        for fd in returned or ():
            with contextlib.suppress(OSError):
                os.close(fd)
        return parse_reply(command, str(reply))

    async def persistent_xml(self) -> str | None:
        """The domain's persistent (inactive) XML; for a transient domain libvirt returns the live one."""
        import libvirt

        if self._dom is None:
            raise BackendError("libvirt backend is not connected")
        try:
            async with asyncio.timeout(self.timeout):
                return str(await asyncio.to_thread(self._dom.XMLDesc, libvirt.VIR_DOMAIN_XML_INACTIVE))
        except TimeoutError:
            raise BackendError(f"dumpxml: no answer from libvirt within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            raise BackendError(f"cannot read the definition of {self.vm!r}: {libvirt_message(exc)}") from None

    async def moments(self) -> list[Moment]:
        """Snapshots and checkpoints (with creation time), the running and the last completed backup job."""
        import libvirt

        if self._dom is None:
            raise BackendError("libvirt backend is not connected")
        dom = self._dom

        def collect() -> list[Moment]:
            found = [parse_snapshot(s.getXMLDesc(0)) for s in dom.listAllSnapshots(0)]
            found += [parse_checkpoint(c.getXMLDesc(0)) for c in dom.listAllCheckpoints(0)]
            with contextlib.suppress(libvirt.libvirtError):  # VIR_ERR_NO_DOMAIN_BACKUP: none runs
                found.append(parse_backup(dom.backupGetXMLDesc(0)))
            stats = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED | libvirt.VIR_DOMAIN_JOB_STATS_KEEP_COMPLETED)
            if (stats.get("type") == libvirt.VIR_DOMAIN_JOB_COMPLETED
                    and stats.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP):
                found.append(completed_backup())
            return [m for m in found if m is not None]

        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.to_thread(collect)
        except TimeoutError:
            raise BackendError(f"snapshots/backups: no answer from libvirt within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            raise BackendError(f"cannot list the snapshots of {self.vm!r}: {libvirt_message(exc)}") from None

    async def secret_value(self, ref: str) -> bytes | None:
        """Value of a libvirt secret by UUID, else by usage (volume, then ceph, iscsi, tls, vtpm)."""
        import libvirt

        if self._conn is None:
            raise BackendError("libvirt backend is not connected")
        conn = self._conn

        def lookup() -> bytes | None:
            candidates: list[Any] = []
            uuid = secret_uuid(ref)
            if uuid is not None:
                candidates.append(lambda: conn.secretLookupByUUIDString(uuid))
            for usage in SECRET_USAGES:
                usage_id = getattr(libvirt, f"VIR_SECRET_USAGE_TYPE_{usage.upper()}", None)
                if usage_id is not None:
                    candidates.append(lambda u=usage_id: conn.secretLookupByUsage(u, ref))
            for find in candidates:
                try:
                    secret = find()
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() in (libvirt.VIR_ERR_NO_SECRET, libvirt.VIR_ERR_INVALID_ARG):
                        continue
                    raise
                try:
                    return bytes(secret.value(0))
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_SECRET:
                        return None  # defined without a value
                    if exc.get_error_code() == libvirt.VIR_ERR_INVALID_SECRET:
                        raise SecretError(private_secret_message(ref)) from None
                    raise
            return None

        try:
            return await asyncio.to_thread(lookup)
        except libvirt.libvirtError as exc:
            raise BackendError(f"cannot read libvirt secret {ref!r}: {libvirt_message(exc)}") from None

    async def close(self) -> None:
        import libvirt
        import libvirt_qemu

        conn, self._conn, self._dom = self._conn, None, None
        if conn is None:
            return
        callback_id, self._callback_id = self._callback_id, None

        def shutdown() -> None:
            if callback_id is not None:
                try:
                    libvirt_qemu.qemuMonitorEventDeregister(conn, callback_id)
                except libvirt.libvirtError:
                    pass
            try:
                conn.close()
            except libvirt.libvirtError:
                pass

        await asyncio.to_thread(shutdown)
