"""Host side of the guest agent: commands over QEMU's serial chardev UNIX socket.

QEMU serves the socket (``-chardev socket,server=on,wait=off``) and accepts one
client at a time. :class:`GuestAgent` is the asyncio client; :class:`SyncGuestAgent`
runs one on a private event loop thread for synchronous callers. Every wait is
bounded, and a transcript of both directions is kept for debugging.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hotluks.demo.guest.errors import GuestAgentError
from hotluks.demo.guest.protocol import (
    BlockDevice,
    Reply,
    ReplyParser,
    encode_command,
    encode_write,
    parse_block_devices,
    parse_hex,
    parse_sha256,
)

T = TypeVar("T")
DeviceMatch = str | Callable[[BlockDevice], bool]
#: bytes of data per ``write`` command (its payload line carries twice as many hex digits)
WRITE_CHUNK = 64 * 1024
_LINE_LIMIT = 1 << 20


def _matcher(match: DeviceMatch) -> Callable[[BlockDevice], bool]:
    if callable(match):
        return match
    return lambda dev: dev.name == match or dev.serial == match


class GuestAgent:
    """An open connection to the ``/init`` agent of one guest."""

    def __init__(self, path: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 transcript_lines: int = 2000):
        self.path = path
        self._reader = reader
        self._writer = writer
        self._parser = ReplyParser()
        self._waiters: dict[str, asyncio.Future[Reply]] = {}
        self._session = os.urandom(3).hex()
        self._counter = 0
        self._closed = False
        self.transcript: collections.deque[str] = collections.deque(maxlen=transcript_lines)
        self._pump = asyncio.get_running_loop().create_task(self._read_lines())

    @classmethod
    async def open(cls, path: Path, timeout: float = 15.0) -> GuestAgent:
        """Connect to the agent socket, retrying until it exists and accepts (bounded)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(str(path), limit=_LINE_LIMIT)
                writer.write(b"\n")  # ends any partial line a previous client left in the guest's tty
                return cls(path, reader, writer)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise GuestAgentError(f"cannot connect to the guest agent socket {path}: {exc}") from None
                await asyncio.sleep(0.05)

    # -- plumbing -------------------------------------------------------------

    def _note(self, direction: str, text: str) -> None:
        self.transcript.append(f"{time.monotonic():.3f} {direction} {text}")

    async def _read_lines(self) -> None:
        try:
            while True:
                raw = await self._reader.readline()
                if not raw:
                    break
                line = raw.decode(errors="replace").rstrip("\r\n")
                self._note("<", line)
                reply = self._parser.feed(line)
                if reply is not None:
                    waiter = self._waiters.pop(reply.id, None)
                    if waiter is not None and not waiter.done():
                        waiter.set_result(reply)
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            self._note("!", f"read failed: {type(exc).__name__}")
        finally:
            self._closed = True
            for waiter in self._waiters.values():
                if not waiter.done():
                    waiter.set_exception(GuestAgentError("the guest agent connection closed"))
            self._waiters.clear()

    def transcript_text(self, last: int | None = None) -> str:
        """The transcript (``>`` sent, ``<`` received), optionally only the last lines."""
        lines = list(self.transcript)
        return "\n".join(lines[-last:] if last else lines)

    async def close(self) -> None:
        """Drop the connection (the guest keeps running; another client may connect)."""
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._pump.cancel()
        with contextlib.suppress(BaseException):
            await self._pump

    async def __aenter__(self) -> GuestAgent:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- commands -------------------------------------------------------------

    def _next_id(self) -> str:
        self._counter += 1
        return f"h{self._session}n{self._counter}"

    async def command(self, command: str, *args: str | int, timeout: float = 30.0, check: bool = True) -> Reply:
        """Run one agent command; ``check`` turns a non-zero status into :class:`GuestAgentError`."""
        cmd_id = self._next_id()
        return await self._request(cmd_id, command, encode_command(cmd_id, command, *args), timeout, check)

    async def _request(self, cmd_id: str, command: str, request: bytes, timeout: float, check: bool) -> Reply:
        if self._closed:
            raise GuestAgentError("the guest agent connection is closed", command=command)
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._waiters[cmd_id] = waiter
        shown = request.decode().strip()
        self._note(">", shown if len(shown) < 200 else shown[:200] + "...")
        try:
            self._writer.write(request)
            await self._writer.drain()
            async with asyncio.timeout(timeout):
                reply = await waiter
        except TimeoutError:
            raise GuestAgentError(f"guest agent command {command!r} got no answer within {timeout:g}s",
                                  command=command) from None
        except OSError as exc:
            raise GuestAgentError(f"guest agent connection failed: {exc}", command=command) from None
        finally:
            self._waiters.pop(cmd_id, None)
        if check and not reply.ok:
            detail = "; ".join(reply.lines[-3:])
            raise GuestAgentError(f"guest agent command {command!r} failed with status {reply.status}: {detail}",
                                  command=command, status=reply.status, output=reply.lines)
        return reply

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> float:
        """Ping until the agent answers; return the seconds waited."""
        start = time.monotonic()
        deadline = start + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GuestAgentError(f"the guest agent did not answer within {timeout:g}s", command="ping")
            try:
                await self.command("ping", timeout=min(interval, remaining))
                return time.monotonic() - start
            except GuestAgentError as exc:
                if self._closed or exc.status is not None:
                    raise

    async def block_devices(self, timeout: float = 15.0) -> list[BlockDevice]:
        """The guest's block devices (name, size in bytes, read-only, serial, SCSI address)."""
        reply = await self.command("ls-block", timeout=timeout)
        return parse_block_devices(reply.lines)

    async def sha256(self, dev: str, size: int | None = None, timeout: float = 120.0) -> str:
        """Hex SHA-256 of the whole device, or of its first ``size`` bytes."""
        args: tuple[int, ...] = () if size is None else (size,)
        reply = await self.command("sha256", dev, *args, timeout=timeout)
        try:
            return parse_sha256(reply.lines)
        except ValueError:
            raise GuestAgentError(f"sha256 of {dev}: no digest in the agent's answer", command="sha256") from None

    async def read(self, dev: str, offset: int, length: int, timeout: float = 60.0) -> bytes:
        """``length`` bytes at ``offset`` of the device (bypassing stale guest buffers)."""
        reply = await self.command("read", dev, offset, length, timeout=timeout)
        try:
            data = parse_hex(reply.lines)
        except ValueError:
            raise GuestAgentError(f"read of {dev}: malformed hex in the agent's answer", command="read") from None
        if len(data) != length:
            raise GuestAgentError(f"read of {dev}: asked {length} bytes, got {len(data)}", command="read")
        return data

    async def write(self, dev: str, offset: int, data: bytes, timeout: float = 60.0) -> None:
        """Write ``data`` at ``offset`` of the device and fsync it."""
        for start in range(0, len(data), WRITE_CHUNK):
            cmd_id = self._next_id()
            request = encode_write(cmd_id, dev, offset + start, data[start:start + WRITE_CHUNK])
            await self._request(cmd_id, "write", request, timeout, True)

    async def sync(self, timeout: float = 30.0) -> None:
        """Flush the guest's dirty buffers."""
        await self.command("sync", timeout=timeout)

    async def dmesg(self, lines: int = 40, timeout: float = 15.0) -> list[str]:
        """The tail of the guest kernel log."""
        return list((await self.command("dmesg", lines, timeout=timeout)).lines)

    async def wait_for_device(self, match: DeviceMatch, timeout: float = 15.0,
                              interval: float = 0.05) -> BlockDevice:
        """Poll ``ls-block`` until a device matches (a name or serial, or a predicate)."""
        test = _matcher(match)
        deadline = time.monotonic() + timeout
        while True:
            found = [dev for dev in await self.block_devices(timeout=max(1.0, deadline - time.monotonic()))
                     if test(dev)]
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise GuestAgentError(f"no guest block device matching {match!r} within {timeout:g}s",
                                      command="ls-block")
            await asyncio.sleep(interval)

    async def wait_device_gone(self, match: DeviceMatch, timeout: float = 15.0, interval: float = 0.05) -> None:
        """Poll ``ls-block`` until no device matches."""
        test = _matcher(match)
        deadline = time.monotonic() + timeout
        while True:
            if not any(test(dev) for dev in await self.block_devices(timeout=max(1.0, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                raise GuestAgentError(f"guest block device {match!r} still present after {timeout:g}s",
                                      command="ls-block")
            await asyncio.sleep(interval)


class SyncGuestAgent:
    """A :class:`GuestAgent` driven from synchronous code (its loop runs on a private thread)."""

    def __init__(self, path: Path, timeout: float = 15.0):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hotluks-guest-agent", daemon=True)
        self._thread.start()
        try:
            self._agent: GuestAgent = self._call(GuestAgent.open(path, timeout), timeout + 5)
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout + 5.0)  # the coroutine has its own timeout; this is a backstop
        except TimeoutError:
            future.cancel()
            raise GuestAgentError("the guest agent call did not finish") from None

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def transcript(self) -> list[str]:
        return list(self._agent.transcript)

    def transcript_text(self, last: int | None = None) -> str:
        return self._agent.transcript_text(last)

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._agent.close(), 5.0)
        self._stop_loop()

    def __enter__(self) -> SyncGuestAgent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def command(self, command: str, *args: str | int, timeout: float = 30.0, check: bool = True) -> Reply:
        return self._call(self._agent.command(command, *args, timeout=timeout, check=check), timeout)

    def wait_ready(self, timeout: float = 60.0) -> float:
        return self._call(self._agent.wait_ready(timeout), timeout)

    def block_devices(self, timeout: float = 15.0) -> list[BlockDevice]:
        return self._call(self._agent.block_devices(timeout), timeout)

    def sha256(self, dev: str, size: int | None = None, timeout: float = 120.0) -> str:
        return self._call(self._agent.sha256(dev, size, timeout), timeout)

    def read(self, dev: str, offset: int, length: int, timeout: float = 60.0) -> bytes:
        return self._call(self._agent.read(dev, offset, length, timeout), timeout)

    def write(self, dev: str, offset: int, data: bytes, timeout: float = 60.0) -> None:
        chunks = max(1, -(-len(data) // WRITE_CHUNK))
        self._call(self._agent.write(dev, offset, data, timeout), timeout * chunks)

    def sync(self, timeout: float = 30.0) -> None:
        self._call(self._agent.sync(timeout), timeout)

    def dmesg(self, lines: int = 40, timeout: float = 15.0) -> list[str]:
        return self._call(self._agent.dmesg(lines, timeout), timeout)

    def wait_for_device(self, match: DeviceMatch, timeout: float = 15.0) -> BlockDevice:
        return self._call(self._agent.wait_for_device(match, timeout), timeout)

    def wait_device_gone(self, match: DeviceMatch, timeout: float = 15.0) -> None:
        self._call(self._agent.wait_device_gone(match, timeout), timeout)
