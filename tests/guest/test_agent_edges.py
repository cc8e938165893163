"""GuestAgent edge paths against a scripted fake agent on a UNIX socket.

The real agent is exercised in integration/guest; these cover what a real
guest rarely does on demand: silence, disconnects, failures, noise.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from hotluks.demo.guest.agent import GuestAgent, SyncGuestAgent
from hotluks.demo.guest.errors import GuestAgentError

Handler = Callable[[str, str, list[str], asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler, path: Path) -> asyncio.Server:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"[ 0.1] kernel noise\n@@HL:READY:1\n")
        while line := await reader.readline():
            words = line.decode().split()
            if not words:
                continue  # the client's leading newline
            if words[1] == "write":  # its hex payload follows on the next line
                words.append((await reader.readline()).decode().strip())
            await handler(words[0], words[1], words[2:], writer)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(client, path=str(path), limit=1 << 20)


async def answer(writer: asyncio.StreamWriter, cmd_id: str, lines: list[str], status: int = 0) -> None:
    writer.write(f"@@HL:{cmd_id}:B\n".encode())
    for line in lines:
        writer.write(f"noise [1.0] kernel\n@@HL:{cmd_id}:| {line}\n".encode())
    writer.write(f"@@HL:{cmd_id}:E:{status}\n".encode())


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 30))  # type: ignore[arg-type]


#: the socket directories made by this test (short paths under /tmp: a UNIX socket's is at most 107 bytes)
_SOCKET_DIRS: list[Path] = []


@pytest.fixture(autouse=True)
def _remove_socket_dirs() -> Iterator[None]:
    yield
    while _SOCKET_DIRS:
        shutil.rmtree(_SOCKET_DIRS.pop(), ignore_errors=True)


def sock_path() -> Path:
    where = Path(tempfile.mkdtemp(prefix="hl-agent-test-"))
    _SOCKET_DIRS.append(where)
    return where / "a.sock"


def test_devices_appear_and_disappear_by_polling() -> None:
    calls = {"n": 0}

    async def handler(cmd_id: str, cmd: str, args: list[str], w: asyncio.StreamWriter) -> None:
        calls["n"] += 1
        present = 3 <= calls["n"] <= 5
        await answer(w, cmd_id, ["vdb 1048576 0 hl7 -"] if present else [])

    async def main() -> None:
        path = sock_path()
        server = await serve(handler, path)
        async with await GuestAgent.open(path) as agent:
            dev = await agent.wait_for_device("hl7", timeout=5, interval=0.01)
            assert (dev.name, dev.size, dev.serial) == ("vdb", 1048576, "hl7")
            await agent.wait_device_gone("vdb", timeout=5, interval=0.01)
            assert any("> " in line and "ls-block" in line for line in agent.transcript)
        server.close()

    run(main())


def test_failure_status_is_a_typed_error_with_output() -> None:
    async def handler(cmd_id: str, cmd: str, args: list[str], w: asyncio.StreamWriter) -> None:
        await answer(w, cmd_id, ["no such block device: vdz"], status=2)

    async def main() -> None:
        path = sock_path()
        server = await serve(handler, path)
        async with await GuestAgent.open(path) as agent:
            with pytest.raises(GuestAgentError, match="status 2: no such block device") as info:
                await agent.sha256("vdz")
            assert info.value.status == 2 and info.value.command == "sha256"
            reply = await agent.command("sha256", "vdz", check=False)
            assert reply.status == 2
        server.close()

    run(main())


def test_silence_times_out_and_disconnect_fails_fast() -> None:
    async def handler(cmd_id: str, cmd: str, args: list[str], w: asyncio.StreamWriter) -> None:
        if cmd == "sync":
            w.close()  # the guest went away mid-command

    async def main() -> None:
        path = sock_path()
        server = await serve(handler, path)
        agent = await GuestAgent.open(path)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(GuestAgentError, match="no answer within 0.3s"):
            await agent.command("ping", timeout=0.3)
        assert loop.time() - start < 2
        with pytest.raises(GuestAgentError, match="wait|closed|answer"):
            await agent.sync(timeout=5)
        assert loop.time() - start < 4
        with pytest.raises(GuestAgentError, match="closed"):
            await agent.command("ping", timeout=5)
        await agent.close()
        server.close()

    run(main())


def test_wait_ready_gives_up_after_its_timeout() -> None:
    async def handler(cmd_id: str, cmd: str, args: list[str], w: asyncio.StreamWriter) -> None:
        return None

    async def main() -> None:
        path = sock_path()
        server = await serve(handler, path)
        async with await GuestAgent.open(path) as agent:
            with pytest.raises(GuestAgentError, match="did not answer within 0.6s"):
                await agent.wait_ready(timeout=0.6, interval=0.2)
        server.close()

    run(main())


def test_open_gives_up_when_no_socket_appears() -> None:
    with pytest.raises(GuestAgentError, match="cannot connect"):
        asyncio.run(GuestAgent.open(sock_path(), timeout=0.3))


def test_sync_wrapper_round_trip_and_write_chunks() -> None:
    seen: list[tuple[str, list[str]]] = []

    async def handler(cmd_id: str, cmd: str, args: list[str], w: asyncio.StreamWriter) -> None:
        seen.append((cmd, args))
        if cmd == "read":
            await answer(w, cmd_id, ["0011", "2233"])
        elif cmd == "sha256":
            await answer(w, cmd_id, ["ab" * 32 + "  -"])
        else:
            await answer(w, cmd_id, [])

    loop = asyncio.new_event_loop()
    path = sock_path()
    server = loop.run_until_complete(serve(handler, path))
    import threading

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        with SyncGuestAgent(path) as agent:
            assert agent.wait_ready(5) < 5
            assert agent.read("vda", 8, 4) == b"\x00\x11\x22\x33"
            assert agent.sha256("vda", 4096) == "ab" * 32
            data = bytes(range(256)) * 520  # 133120 bytes: three chunks
            agent.write("vda", 100, data)
            writes = [args for cmd, args in seen if cmd == "write"]
            assert [(a[0], int(a[1]), int(a[2])) for a in writes] == [
                ("vda", 100, 65536), ("vda", 65636, 65536), ("vda", 131172, 2048)]
            assert all(re.fullmatch(r"[0-9a-f]+", a[3]) for a in writes)
            assert b"".join(bytes.fromhex(a[3]) for a in writes) == data
            with pytest.raises(GuestAgentError, match="asked 5 bytes, got 4"):
                agent.read("vda", 0, 5)
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
