"""A QEMU that greets but never finishes the handshake gets a clear error within the timeout."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.errors import BackendError

GREETING = {"QMP": {"version": {"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""},
                    "capabilities": ["oob"]}}


def test_stalled_handshake_is_a_clear_timeout(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(json.dumps(GREETING).encode() + b"\r\n")
        await writer.drain()
        await reader.read()  # like a QEMU whose main loop is blocked: never answers qmp_capabilities

    async def main() -> str:
        server = await asyncio.start_unix_server(serve, path=str(path))
        try:
            start = time.monotonic()
            with pytest.raises(BackendError) as info:
                await QMPBackend(path, timeout=1.0).connect()
            assert time.monotonic() - start < 5
            return str(info.value)
        finally:
            server.close()

    message = asyncio.run(main())
    assert str(path) in message
    assert "handshake" in message or "another client" in message
    assert not message.rstrip().endswith(":")
