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
import base64
import contextlib
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hotluks.backends.base import Event, MasterKey, MonitorBackend, QMPArgs, QMPCommandError
from hotluks.errors import BackendError, InputError, SecretError

DEFAULT_URI = "qemu:///system"
MASTER_KEY_ID = "masterKey0"
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")

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


def private_secret_message(ref: str) -> str:
    return (f"libvirt secret {ref!r} is private: its value cannot be read back; define it with "
            "private='no' or give hotluks the passphrase")


def parse_reply(command: str, reply: str) -> Any:
    """The ``return`` value of a QMP reply text; :class:`QMPCommandError` for an error reply."""
    try:
        data = json.loads(reply)
    except ValueError:
        raise BackendError(f"{command}: unreadable reply from the monitor") from None
    if not isinstance(data, dict):
        raise BackendError(f"{command}: unexpected reply from the monitor")
    if "error" in data:
        err = data["error"] if isinstance(data["error"], dict) else {}
        raise QMPCommandError(command, str(err.get("class", "GenericError")), str(err.get("desc", "unknown error")))
    if "return" not in data:
        raise BackendError(f"{command}: reply from the monitor has neither 'return' nor 'error'")
    return data["return"]


def command_json(command: str, arguments: QMPArgs | None) -> str:
    """The QMP command as one JSON text."""
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = dict(arguments)
    return json.dumps(msg)


def event_from_libvirt(name: str, seconds: int, micros: int, details: str | None) -> Event:
    """A libvirt QEMU-monitor event shaped like the QMP event QEMU sent."""
    data: Any = {}
    if details:
        try:
            data = json.loads(details)
        except ValueError:
            data = {}
    return {"event": name, "data": data if isinstance(data, dict) else {},
            "timestamp": {"seconds": seconds, "microseconds": micros}}


def decode_master_key(raw: bytes, fmt: str) -> bytes:
    """The key bytes of a ``secret`` object's file (``raw`` or ``base64`` format)."""
    key = base64.b64decode(raw, validate=True) if fmt == "base64" else raw
    if len(key) != 32:
        raise BackendError(f"{MASTER_KEY_ID} is {len(key)} bytes, expected 32 (AES-256)")
    return key


async def probe_master_key(backend: MonitorBackend) -> MasterKey | None:
    """libvirt's per-domain AES key, read from the file QEMU's ``masterKey0`` object names.

    libvirt 11 starts every QEMU with ``-object secret,id=masterKey0,format=raw,
    file=/var/lib/libvirt/qemu/domain-<id>-<name>/master-key.aes`` (32 raw bytes,
    readable by root). Asking QEMU for the object's ``file`` ties the key to the
    running process rather than guessing the directory name.
    """
    try:
        path = await backend.execute("qom-get", {"path": f"/objects/{MASTER_KEY_ID}", "property": "file"})
        fmt = await backend.execute("qom-get", {"path": f"/objects/{MASTER_KEY_ID}", "property": "format"})
    except QMPCommandError:
        return None
    if not isinstance(path, str) or not path:
        return None
    try:
        raw = await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise BackendError(f"cannot read libvirt's master key {path}: {exc.strerror}") from None
    return MasterKey(MASTER_KEY_ID, decode_master_key(raw, str(fmt)))


def lookup_domain(conn: Any, name: str) -> Any:
    """A domain by name, else by UUID (as virsh accepts both)."""
    import libvirt

    try:
        return conn.lookupByName(name)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN or not _UUID_RE.match(name):
            raise
    return conn.lookupByUUIDString(name)


class LibvirtBackend(MonitorBackend):
    """One libvirt connection to one domain; monitor commands taint the domain (``custom-monitor``)."""

    name = "libvirt"
    passes_fds = True

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
        #: the domain's name as libvirt knows it (set by connect)
        self.domain_name: str | None = None

    @property
    def vm_key(self) -> str:
        """``libvirt-URI-NAME`` with the domain's real name (also when opened by UUID); same as virsh's."""
        return f"libvirt-{self.uri}-{self.domain_name or self.vm}"

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
                    raise InputError(f"libvirt domain {self.vm!r} on {self.uri} is not running")
            except BaseException:
                conn.close()
                raise
            return conn, dom

        try:
            async with asyncio.timeout(self.timeout):
                self._conn, self._dom = await asyncio.to_thread(open_and_lookup)
                self.domain_name = str(self._dom.name())
        except TimeoutError:
            raise BackendError(f"libvirt at {self.uri} did not answer within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise InputError(f"no libvirt domain named {self.vm!r} on {self.uri}") from None
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
            loop.call_soon_threadsafe(self._dispatch_event, event_from_libvirt(event, seconds, micros, details))

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        import libvirt
        import libvirt_qemu

        if self._dom is None:
            raise BackendError("libvirt backend is not connected")
        text = command_json(command, arguments)
        try:
            async with asyncio.timeout(self.timeout):
                reply = await asyncio.to_thread(libvirt_qemu.qemuMonitorCommand, self._dom, text, 0)
        except TimeoutError:
            raise BackendError(f"{command}: no answer from libvirt within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            # libvirt's message names the failure (domain gone, daemon gone); it never echoes our JSON
            raise BackendError(f"{command}: libvirt failed on domain {self.vm!r}: {libvirt_message(exc)}") from None
        return parse_reply(command, str(reply))

    async def execute_with_fds(self, command: str, arguments: QMPArgs | None, fds: Sequence[int]) -> Any:
        """Run a command that receives open file descriptors (``add-fd``, ``getfd``).

        libvirt runs QEMU in a private ``/dev`` (mount namespace) under a device
        cgroup and as ``libvirt-qemu``: a block device or file libvirt did not set
        up cannot be opened by path from the monitor. hotluks opens it and passes
        the descriptor (``add-fd`` → ``/dev/fdset/N``). Our copies stay open: the
        caller closes them.
        """
        import libvirt
        import libvirt_qemu

        if self._dom is None:
            raise BackendError("libvirt backend is not connected")
        text = command_json(command, arguments)
        try:
            async with asyncio.timeout(self.timeout):
                reply, returned = await asyncio.to_thread(
                    libvirt_qemu.qemuMonitorCommandWithFiles, self._dom, text, list(fds), 0)
        except TimeoutError:
            raise BackendError(f"{command}: no answer from libvirt within {self.timeout:.0f}s") from None
        except libvirt.libvirtError as exc:
            raise BackendError(f"{command}: libvirt failed on domain {self.vm!r}: {libvirt_message(exc)}") from None
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

    async def secret_value(self, ref: str) -> bytes | None:
        """Value of a libvirt secret by UUID, else by usage (volume, then ceph, iscsi, tls, vtpm)."""
        import libvirt

        if self._conn is None:
            raise BackendError("libvirt backend is not connected")
        conn = self._conn

        def lookup() -> bytes | None:
            candidates: list[Any] = []
            if _UUID_RE.match(ref):
                candidates.append(lambda: conn.secretLookupByUUIDString(ref))
            for usage in ("VOLUME", "CEPH", "ISCSI", "TLS", "VTPM"):
                usage_id = getattr(libvirt, f"VIR_SECRET_USAGE_TYPE_{usage}", None)
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
