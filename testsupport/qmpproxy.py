"""A recording, delaying, fault-injecting proxy between a QMP client and QEMU's QMP socket.

    with QMPProxy(vm.qmp_path, delay_ms=20) as proxy:
        run_hotluks("unix:" + str(proxy.path))
        assert b"secret" not in proxy.transcript()

The proxy listens on its own UNIX socket and opens one upstream connection to
QEMU per client connection (QEMU serves one client per ``-qmp`` socket, so
clients still take turns, as they would without the proxy). Every byte is
recorded both ways. Client messages are forwarded whole and in order, each
after ``delay_ms``; ``fail`` can answer a client command with a QMP error
instead of forwarding it, and ``on_command`` sees each command first (e.g. to
kill QEMU at a precise point). It runs its own event loop in a background
thread, so synchronous tests can use it; ``stop()`` closes every connection.
"""

from __future__ import annotations

import asyncio
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from testsupport.unixserver import ThreadedUnixServer

Direction = Literal["c2s", "s2c"]
#: ``fail(command_number, message)`` → error text to answer with, or None to forward
FailHook = Callable[[int, dict[str, Any]], str | None]
#: ``on_command(command_number, message)`` runs (in the proxy thread) before the command is forwarded
CommandHook = Callable[[int, dict[str, Any]], None]


@dataclass(frozen=True)
class Chunk:
    """Bytes seen on the wire, in one direction, on one client connection."""

    connection: int
    direction: Direction
    data: bytes
    at: float


def split_messages(buffer: bytearray) -> list[dict[str, Any]]:
    """Remove and return the complete JSON objects at the front of ``buffer``."""
    decoder = json.JSONDecoder()
    out: list[dict[str, Any]] = []
    text = buffer.decode("utf-8", errors="surrogateescape")
    pos = 0
    while True:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        if pos >= len(text):
            break
        try:
            obj, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            break  # incomplete: wait for more bytes
        out.append(obj)
        pos = end
    del buffer[: len(text[:pos].encode("utf-8", errors="surrogateescape"))]
    return out


class QMPProxy(ThreadedUnixServer):
    """UNIX-socket QMP proxy in a background thread (see the module docstring)."""

    thread_name = "qmp-proxy"

    def __init__(self, upstream: str | Path, *, path: str | Path | None = None, delay_ms: float = 0.0,
                 fail: FailHook | None = None, on_command: CommandHook | None = None):
        self.upstream = Path(upstream)
        tmpdir = None
        if path is None:
            tmpdir = Path(tempfile.mkdtemp(prefix="hotluks-qmpproxy-"))
            path = tmpdir / "proxy.sock"
        super().__init__(Path(path), tmpdir)
        self.delay_ms = delay_ms
        self.fail = fail
        self.on_command = on_command
        self.chunks: list[Chunk] = []
        self.commands: list[dict[str, Any]] = []  # every client command, forwarded or failed
        self._cond = threading.Condition()
        self._connections = 0

    # -- observations ----------------------------------------------------------------
    def transcript(self, direction: Direction | None = None) -> bytes:
        """Every recorded byte (optionally one direction), in order."""
        with self._cond:
            return b"".join(c.data for c in self.chunks if direction is None or c.direction == direction)

    def executed(self) -> list[str]:
        """Names of the client commands seen so far."""
        with self._cond:
            return [str(m.get("execute") or m.get("exec-oob")) for m in self.commands]

    def wait_for_commands(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` client commands were seen in total; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.commands) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def reset(self) -> None:
        """Forget what was recorded (connections stay open)."""
        with self._cond:
            self.chunks.clear()
            self.commands.clear()

    # -- the proxy ----------------------------------------------------------------------
    def _record(self, conn: int, direction: Direction, data: bytes) -> None:
        with self._cond:
            self.chunks.append(Chunk(conn, direction, data, time.monotonic()))

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._connections += 1
        conn = self._connections
        self._writers.add(c_writer)
        try:
            deadline = time.monotonic() + 60
            while True:  # like a direct client: QEMU's backlog of one refuses with EAGAIN while busy
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                try:
                    sock.connect(str(self.upstream))
                except BlockingIOError:
                    sock.close()
                    if time.monotonic() > deadline:
                        return
                    await asyncio.sleep(0.05)
                    continue
                except OSError:
                    sock.close()
                    return
                s_reader, s_writer = await asyncio.open_unix_connection(sock=sock)
                break
            self._writers.add(s_writer)
            lock = asyncio.Lock()  # whole messages only towards the client
            up = asyncio.create_task(self._client_to_server(conn, c_reader, s_writer, c_writer, lock))
            down = asyncio.create_task(self._server_to_client(conn, s_reader, c_writer, lock))
            try:
                await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (up, down):
                    t.cancel()
                await asyncio.gather(up, down, return_exceptions=True)
                s_writer.close()
                self._writers.discard(s_writer)
        finally:
            c_writer.close()
            self._writers.discard(c_writer)
            self._tasks.discard(task)

    async def _client_to_server(self, conn: int, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter,
                                client: asyncio.StreamWriter, lock: asyncio.Lock) -> None:
        buffer = bytearray()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            self._record(conn, "c2s", data)
            buffer += data
            for message in split_messages(buffer):
                with self._cond:
                    self.commands.append(message)
                    number = len(self.commands)
                    self._cond.notify_all()
                if self.delay_ms:
                    await asyncio.sleep(self.delay_ms / 1000)
                if self.on_command is not None:
                    self.on_command(number, message)
                error = self.fail(number, message) if self.fail is not None else None
                if error is not None:
                    reply: dict[str, Any] = {"error": {"class": "GenericError", "desc": error}}
                    if "id" in message:
                        reply["id"] = message["id"]
                    raw = json.dumps(reply).encode() + b"\r\n"
                    async with lock:
                        self._record(conn, "s2c", raw)
                        client.write(raw)
                        await client.drain()
                    continue
                upstream.write(json.dumps(message).encode() + b"\n")
                await upstream.drain()

    async def _server_to_client(self, conn: int, reader: asyncio.StreamReader, client: asyncio.StreamWriter,
                                lock: asyncio.Lock) -> None:
        buffer = bytearray()
        while True:
            data = await reader.read(65536)
            if not data:
                return
            self._record(conn, "s2c", data)
            buffer += data
            messages = split_messages(buffer)
            if messages:
                async with lock:
                    client.write(b"".join(json.dumps(m).encode() + b"\r\n" for m in messages))
                    await client.drain()


def is_mutating(message: dict[str, Any]) -> bool:
    """True for the commands a plan (or its undo) sends to change the VM."""
    return str(message.get("execute")) in MUTATING


MUTATING = frozenset({"object-add", "object-del", "blockdev-add", "blockdev-del", "device_add", "device_del"})
