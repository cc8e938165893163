"""The recording/delaying/fault-injecting QMP proxy, against a tiny fake QMP server."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.qmpproxy import QMPProxy, is_mutating, split_messages


def test_split_messages_keeps_incomplete_tail() -> None:
    buf = bytearray(b'{"execute": "a"}\r\n{"execute":"b","arguments":{"x":"}{"}}  {"exec')
    assert split_messages(buf) == [{"execute": "a"}, {"execute": "b", "arguments": {"x": "}{"}}]
    assert bytes(buf) == b'{"exec'
    buf += b'ute": "c"}\n'
    assert split_messages(buf) == [{"execute": "c"}] and buf == bytearray()
    assert is_mutating({"execute": "blockdev-add"}) and not is_mutating({"execute": "query-pci"})


@pytest.fixture
def fake_qemu(tmp_path: Path) -> Iterator[Path]:
    """Greets, then answers every command with ``{"return": {"echo": NAME}, "id": ID}``."""
    path = tmp_path / "qemu.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b'{"QMP": {"version": {}, "capabilities": []}}\r\n')
                buf = bytearray()
                conn.settimeout(0.1)
                while not stop.is_set():
                    try:
                        data = conn.recv(4096)
                    except TimeoutError:
                        continue
                    if not data:
                        break
                    buf += data
                    for msg in split_messages(buf):
                        reply = {"return": {"echo": msg["execute"]}, "id": msg.get("id")}
                        conn.sendall(json.dumps(reply).encode() + b"\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    stop.set()
    thread.join(5)
    server.close()


def _talk(path: Path, commands: list[str]) -> tuple[list[dict[str, object]], float]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        stream = sock.makefile("rb")
        stream.readline()  # greeting
        started = time.monotonic()
        replies = []
        for i, name in enumerate(commands):
            sock.sendall(json.dumps({"execute": name, "id": i}).encode())  # no newline: framing by JSON
            replies.append(json.loads(stream.readline()))
        return replies, time.monotonic() - started


def test_proxy_records_delays_and_injects(fake_qemu: Path) -> None:
    seen: list[int] = []
    proxy = QMPProxy(fake_qemu, delay_ms=40, on_command=lambda n, m: seen.append(n),
                     fail=lambda n, m: "nope" if m["execute"] == "blockdev-add" else None)
    with proxy:
        replies, took = _talk(proxy.path, ["query-pci", "blockdev-add", "device_add"])
        assert proxy.wait_for_commands(3, timeout=1) and not proxy.wait_for_commands(4, timeout=0.05)
    assert replies[0] == {"return": {"echo": "query-pci"}, "id": 0}
    assert replies[1] == {"error": {"class": "GenericError", "desc": "nope"}, "id": 1}  # not forwarded
    assert replies[2]["return"] == {"echo": "device_add"}
    assert took >= 0.12  # 3 x 40 ms
    assert seen == [1, 2, 3] and proxy.executed() == ["query-pci", "blockdev-add", "device_add"]
    assert b'"execute": "blockdev-add"' in proxy.transcript("c2s")
    assert b"nope" in proxy.transcript("s2c") and b'"echo": "blockdev-add"' not in proxy.transcript("s2c")
    assert not proxy.path.exists() and not proxy.path.parent.exists()  # stop() cleaned up
    assert proxy._thread is not None and not proxy._thread.is_alive()


def test_proxy_closes_the_client_when_upstream_is_gone(tmp_path: Path) -> None:
    with QMPProxy(tmp_path / "nothing.sock") as proxy, socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(proxy.path))
        assert sock.recv(100) == b""
