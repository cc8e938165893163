"""QMP over a UNIX socket, with qemu.qmp."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import stat
from pathlib import Path
from typing import Any

from hotluks.backends.base import MasterKey, MonitorBackend, QMPArgs, QMPCommandError, VMIdentity
from hotluks.backends.identity import peer_pid, process_instance, qemu_pid_from_vcpus, vm_uuid
from hotluks.backends.replies import checked
from hotluks.errors import BackendError, MalformedReply, NotRunning

#: the longest QMP message hotluks reads. QEMU's largest reply it asks for is the schema
#: (~240 KB for QEMU 10); parsed JSON of small objects takes ~30-80 times its size in memory,
#: so a peer's 10 MB line would cost hundreds of MiB: longer messages end the connection
MAX_MESSAGE = 2 << 20


def socket_path(vm: str) -> Path | None:
    """The socket path when ``vm`` names a QMP socket (``unix:/path`` or a socket file)."""
    if vm.startswith("unix:"):
        return Path(vm[5:])
    path = Path(vm)
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            return path
    except (OSError, ValueError):  # no such path, too long, a loop, NUL: not a socket
        pass
    return None


@functools.cache
def _client_class() -> type[Any]:
    """qemu.qmp's QMPClient without its per-message logging hooks.

    The stock hooks pretty-print every message in and out (``json.dumps(indent=2)``,
    the pure-Python encoder) for a debug log that we keep disabled anyway because it
    would carry secrets; for the ~1 MB schema reply that alone costs ~100 ms of CPU.
    """
    from qemu.qmp import QMPClient
    from qemu.qmp.message import Message

    class QuietQMPClient(QMPClient):
        _limit = MAX_MESSAGE  # the read limit in qemu.qmp 0.0.3 (newer ones: ``readbuflen``, set per client)

        def _cb_outbound(self, msg: Message) -> Message:
            return msg

        def _cb_inbound(self, msg: Message) -> Message:
            return msg

    return QuietQMPClient


class QMPBackend(MonitorBackend):
    """Talks QMP directly to ``-qmp unix:PATH,server=on``.

    QEMU serves one client per QMP socket: if another client holds it, QEMU
    accepts the connection but never greets us, which we turn into a clear error.
    """

    name = "qmp"

    def __init__(self, path: Path, *, master_key: MasterKey | None = None, timeout: float = 10.0):
        super().__init__()
        self.path = path
        self.vm = str(path)
        self.master_key = master_key
        self.timeout = timeout
        self._client: Any = None
        self._pump: asyncio.Task[None] | None = None
        self._peer_pid: int | None = None
        self._identity: VMIdentity | None = None
        self._stuck: str | None = None  # a command QEMU did not answer in time

    @property
    def vm_key(self) -> str:
        """The VM's identity key once connected (every socket of one QEMU alike), else the socket's real path."""
        if self._identity is not None:
            return self._identity.key
        return self._socket_key()

    def _socket_key(self) -> str:
        return f"{self.name}-{os.path.realpath(self.path)}"

    async def connect(self) -> QMPBackend:
        """Connect and negotiate, waiting up to ``timeout`` while another client is served.

        QEMU's QMP listener has a backlog of one: while a client is connected, one more
        connection waits (no greeting yet) and further ones are refused with EAGAIN.
        Both mean "busy": we wait (retrying EAGAIN) until the timeout.
        """
        from qemu.qmp.protocol import ConnectError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        while True:
            # connect the socket ourselves: asyncio treats a unix-socket EAGAIN (backlog full)
            # as "in progress" and hands back an unconnected stream that only yields EOF
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                sock.connect(str(self.path))
                break
            except BlockingIOError:
                sock.close()
                if loop.time() + 0.05 >= deadline:
                    raise self._busy_error() from None
                await asyncio.sleep(0.05)  # another client is being served and one more is waiting
            except (FileNotFoundError, ConnectionRefusedError) as exc:
                sock.close()
                raise NotRunning(f"no QEMU listens on QMP socket {self.path}: {exc.strerror}") from None
            except OSError as exc:
                sock.close()
                raise BackendError(f"cannot connect to QMP socket {self.path}: {exc.strerror or exc}") from None
        self._peer_pid = peer_pid(sock)  # the process that listens: QEMU itself for -qmp unix:…,server=on
        client = _client_class()(f"hotluks:{self.path.name}")
        client.readbuflen = MAX_MESSAGE  # (qemu.qmp's own default is 10 MB)
        client.logger.disabled = True  # qemu.qmp logs traffic at debug level; it may carry secrets
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0.001)):
                await client.connect(sock)
        except TimeoutError:
            greeted = getattr(client, "greeting", None) is not None
            with contextlib.suppress(Exception):
                await client.disconnect()
            sock.close()
            if greeted:  # not a busy QEMU (that one never greets): something answers, but not as QEMU does
                raise BackendError(f"cannot connect to QMP socket {self.path}: the peer greeted but did not "
                                   f"answer qmp_capabilities within {self.timeout:g}s") from None
            raise self._busy_error() from None
        except (ConnectError, OSError) as exc:
            with contextlib.suppress(Exception):
                await client.disconnect()
            sock.close()
            cause = getattr(exc, "exc", None)
            reason = str(cause or "").strip() or type(cause).__name__ if cause is not None else str(exc)
            if not reason or reason in ("TimeoutError", "CancelledError"):
                reason = ("QEMU did not complete the QMP handshake; it may be blocked in a long operation "
                          "(e.g. a block device waiting for its storage). Retry when it answers again")
            raise BackendError(f"cannot connect to QMP socket {self.path}: {reason}") from None
        self._client = client
        self._pump = loop.create_task(self._pump_events())
        try:
            await self.identity()  # journals and locks are keyed by the VM, not by this socket
        except BaseException:
            await self.close()
            raise
        return self

    async def identity(self) -> VMIdentity:
        """The VM's UUID (else its QEMU process) and the QEMU process behind this socket.

        The process is the owner of the VM's vCPU threads (``query-cpus-fast``), which is
        QEMU itself whatever sits between us (a proxy, a socket another process created);
        when those threads are not visible here, the socket's peer (``SO_PEERCRED``).
        """
        if self._identity is None:
            pid = await qemu_pid_from_vcpus(self)
            instance = process_instance(pid) if pid is not None else None
            if instance is None and self._peer_pid is not None:
                instance = process_instance(self._peer_pid)
            uuid = await vm_uuid(self)
            if uuid is not None:
                key = uuid
            elif instance is not None:
                key = f"qemu-pid{instance}"
            else:  # a QEMU we cannot see (another pid namespace): the socket is all we know
                key = self._socket_key()
            self._identity = VMIdentity(key, instance or "")
        return self._identity

    def _busy_error(self) -> BackendError:
        return BackendError(
            f"QMP socket {self.path} did not let us in within {self.timeout:g}s: another client probably "
            "holds it (QEMU serves one client per -qmp socket). Start QEMU with a second -qmp socket for "
            "hotluks, or use the libvirt backend. (A QEMU blocked in a long operation, e.g. a block device "
            "waiting for its storage, looks the same: retry when it answers again.)")

    async def _pump_events(self) -> None:
        with self._client.listener() as listener:
            async for event in listener:
                self._dispatch_event(dict(event))

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        from qemu.qmp import ExecInterruptedError, ExecuteError
        from qemu.qmp.protocol import StateError

        if self._client is None:
            raise BackendError("QMP backend is not connected")
        if self._stuck is not None:  # QEMU answers in order: nothing comes before the late reply
            raise BackendError(f"{command}: not sent, QEMU has not answered {self._stuck} (for over "
                               f"{self.timeout:g}s)")
        try:
            async with asyncio.timeout(self.timeout):
                reply = await self._client.execute(command, dict(arguments) if arguments else None)
        except ExecuteError as exc:
            err = exc.error.error
            raise QMPCommandError(command, err.class_, err.desc) from None
        except TimeoutError:
            self._stuck = command
            raise BackendError(f"{command}: no answer from QEMU within {self.timeout:g}s") from None
        except (StateError, ExecInterruptedError, EOFError, ConnectionError, OSError) as exc:
            raise BackendError(f"{command}: connection to QEMU lost ({type(exc).__name__}: QEMU exited or "
                               "closed the monitor, or sent a message that is not QMP or over 2 MiB)") from None
        except Exception as exc:  # qemu.qmp's own protocol errors
            if exc.__class__.__module__.startswith("qemu.qmp"):
                raise protocol_error(command, exc) from None
            raise
        return checked(command, reply)

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(BaseException):
                await self._pump
            self._pump = None
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.disconnect()
            self._client = None


#: what qemu.qmp's protocol errors mean, in the operator's words (its messages name its internals)
PROTOCOL_FAULTS = {
    "BadReplyError": "the reply has neither a 'return' member nor a well-formed 'error'",
    "ServerParseError": ("the monitor sent an error that answers no command: QEMU could not parse a message "
                         "it was sent, or the socket is not QEMU's monitor"),
}


def protocol_error(command: str, exc: Exception) -> BackendError:
    """The BackendError for one of qemu.qmp's protocol errors raised while ``command`` waited.

    A reply of the wrong shape is a :class:`MalformedReply`, as for the replies hotluks checks
    itself (:mod:`hotluks.backends.replies`).
    """
    name = type(exc).__name__
    if name == "BadReplyError":
        return MalformedReply(f"{command}: malformed reply from the monitor: {PROTOCOL_FAULTS[name]}")
    why = PROTOCOL_FAULTS.get(name, "the monitor broke the QMP protocol")
    return BackendError(f"{command}: QMP protocol error ({name}): {why}")
