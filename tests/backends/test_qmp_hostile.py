"""The QMP backend and the runner against a misbehaving monitor (testsupport.hostileqmp, in process):
malformed replies are typed, timeouts bound the handshake and every reply, and the exit code follows
the phase (2 before the first change, 1 after a clean rollback)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.qmp import MAX_MESSAGE, QMPBackend
from hotluks.errors import BackendError, MalformedReply, RolledBack
from hotluks.runner.operator import Operator
from hotluks.runner.vmstate import snapshot
from tests.runner.fakedisks import SECRETS, UUID, disk_xml, make
from testsupport.hostileqmp import GREETING, HANG, HostileQMP, line, raw, returns, then


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _connect(server: HostileQMP, timeout: float = 2.0) -> QMPBackend:
    return await QMPBackend(server.path, timeout=timeout).connect()


def test_a_reply_of_the_wrong_type_is_malformed_not_a_type_error() -> None:
    """Issue 14, finding 9: ``{"return": 5}`` gave exit 70."""
    async def go() -> None:
        backend = await _connect(server)
        try:
            with pytest.raises(MalformedReply, match="query-named-block-nodes: malformed reply .* got a number"):
                await snapshot(backend)
        finally:
            await backend.close()

    with HostileQMP({"query-named-block-nodes": returns(5)}) as server:
        run(go())


@pytest.mark.parametrize(("greeting", "capabilities"), [([HANG], None), ([line(GREETING)], raw(HANG))],
                         ids=["no-greeting", "qmp_capabilities-unanswered"])
def test_the_handshake_is_bounded_by_the_timeout(greeting: list[Any], capabilities: Any) -> None:
    with HostileQMP(greeting=greeting, capabilities=capabilities) as server:
        started = time.monotonic()
        with pytest.raises(BackendError):
            run(_connect(server, timeout=1.0))
        assert time.monotonic() - started < 3


def test_after_an_unanswered_command_the_next_fails_at_once() -> None:
    """QEMU answers in order: once one reply is overdue, waiting again for the next only doubles the time."""
    async def go() -> None:
        backend = await _connect(server, timeout=1.0)
        try:
            with pytest.raises(BackendError, match="no answer from QEMU within 1s"):
                await backend.execute("query-pci")
            started = time.monotonic()
            with pytest.raises(BackendError, match="not sent, QEMU has not answered query-pci"):
                await backend.execute("query-version")
            assert time.monotonic() - started < 0.5
        finally:
            await backend.close()

    with HostileQMP({"query-pci": raw(HANG)}) as server:
        run(go())


@pytest.mark.parametrize("command", ["blockdev-add", "device_add"])
def test_a_malformed_reply_after_the_first_change_rolls_back(tmp_path: Path, command: str) -> None:
    """After a mutation a malformed reply is a failed step: rollback, exit 1, the VM as before."""
    disk = make(tmp_path, "attached-luks")

    async def go() -> None:
        backend = await _connect(server)
        try:
            with pytest.raises(RolledBack, match=f"{command}: malformed reply") as info:
                await Operator(backend, state_dir=tmp_path / "s").attach(disk, SECRETS, preflight=False)
            assert info.value.exit_code == 1
        finally:
            await backend.close()

    with HostileQMP({command: returns(5)}) as server:
        before = server.vm.snapshot_state()
        run(go())
        assert server.vm.state == before


def test_a_malformed_reply_before_detach_changes_anything_refuses(tmp_path: Path) -> None:
    """Detach queries the VM before marking the record: a bad reply there is exit 2, the record untouched."""
    disk = make(tmp_path, "attached-luks")
    state = tmp_path / "s"

    async def attach() -> None:
        backend = await _connect(server)
        try:
            await Operator(backend, state_dir=state).attach(disk, SECRETS, preflight=False)
        finally:
            await backend.close()

    async def detach() -> None:
        backend = await _connect(server)
        try:
            with pytest.raises(MalformedReply) as info:
                await Operator(backend, state_dir=state).detach(disk.target_dev)
            assert info.value.exit_code == 2
            server.rules.clear()
            (entry,) = await Operator(backend, state_dir=state).status()
            assert entry.status == "attached" and entry.consistent
        finally:
            await backend.close()

    with HostileQMP() as server:
        run(attach())
        server.counts.clear()
        server.rules["qom-list@1"] = returns("x")  # detach's first query, before it marks the record
        run(detach())


def test_a_peer_that_greets_but_never_negotiates_is_not_called_busy() -> None:
    with HostileQMP(capabilities=raw(HANG)) as server:
        with pytest.raises(BackendError, match="greeted but did not answer qmp_capabilities within 1s"):
            run(_connect(server, timeout=1.0))


def test_a_message_over_the_limit_ends_the_connection_before_it_is_parsed() -> None:
    """A few MB of tiny JSON objects would take hundreds of MiB once parsed: refused unread."""
    async def go() -> None:
        backend = await _connect(server)
        try:
            with pytest.raises(BackendError, match="connection to QEMU lost .*over 2 MiB"):
                await backend.execute("query-pci")
        finally:
            await backend.close()

    big = b'{"return": "' + b"x" * (MAX_MESSAGE + 10) + b'", "id": "__qmp#00001"}\r\n'
    with HostileQMP({"query-pci": raw(big)}) as server:
        run(go())


@pytest.mark.parametrize("command", ["attach-dry-run", "status", "placement"])
def test_a_read_only_command_is_bounded_in_all_by_its_timeout(tmp_path: Path, command: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Each reply in time but all of them not: --timeout bounds the whole read-only conversation."""
    from hotluks.cli.main import main

    secret = tmp_path / "pass"
    secret.write_bytes(b"fake-passphrase")
    disk = tmp_path / "disk.xml"
    disk.write_text(disk_xml(tmp_path, "attached-luks"))
    slow = {q: then([0.4]) for q in ("query-cpus-fast", "query-uuid", "query-version", "query-qmp-schema",
                                     "query-named-block-nodes", "qom-list", "qom-get", "query-pci")}
    with HostileQMP() as server:
        vm = f"unix:{server.path}"
        argv = {"attach-dry-run": ["attach", vm, str(disk), "--secret", f"{UUID}={secret}", "--no-preflight",
                                   "--dry-run"],
                "status": ["status", vm],
                "placement": ["placement", vm, "--target", "vdb"]}[command]
        if command != "placement":
            argv += ["--state-dir", str(tmp_path / "s")]
        if command == "status":  # status asks nothing without a record: give it one to check
            disk_obj = make(tmp_path, "attached-luks")

            async def attach() -> None:
                backend = await _connect(server, timeout=5.0)
                try:
                    await Operator(backend, state_dir=tmp_path / "s").attach(disk_obj, SECRETS, preflight=False)
                finally:
                    await backend.close()

            run(attach())
        server.rules.update(slow)
        started = time.monotonic()
        assert main([*argv, "--timeout", "1"]) == 2
        assert time.monotonic() - started < 2
    assert "did not answer all queries within 1s (--timeout); nothing was changed" in capsys.readouterr().err
