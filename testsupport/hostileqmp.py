"""A scripted, misbehaving QMP server on a UNIX socket, for hostile-reply tests.

    with HostileQMP(rules={"query-pci": returns(5)}) as server:
        run_hotluks("attach", "unix:" + str(server.path), ...)

By default it behaves like a small QEMU: a correct greeting, ``qmp_capabilities``, and
every command answered by :class:`testsupport.fakeqemu.FakeQemu` (a q35 VM with root
ports and a SCSI controller; ``DEVICE_DELETED`` events are forwarded). A *rule* replaces
the answer to one command: ``rules["query-pci"]`` for every call, ``rules["query-pci@2"]``
for the second call only (counted over the server's life, across connections). A rule gets
the default answer (a ``{"return": …}`` or ``{"error": …}`` document, computed against the
fake VM, so mutations still happen) and the client's message, and returns what to send:
a list of *steps* — ``bytes`` are written as is, a ``float`` sleeps that many seconds
(:data:`HANG` forever), :data:`CLOSE` closes the connection. ``greeting`` replaces the
greeting the same way (a list of steps; ``[]`` sends none).

It runs its own event loop in a background thread; the socket lives in a fresh temp
directory that :meth:`stop` removes, after closing every connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hotluks.backends.base import EventQueue, QMPCommandError
from testsupport.fakeqemu import FakeQemu
from testsupport.qmpproxy import split_messages
from testsupport.unixserver import ThreadedUnixServer

#: a step that closes the connection
CLOSE = None
#: a step that never ends (the server stays silent on this connection)
HANG = float("inf")
Step = bytes | float | None
#: ``rule(default_reply_document, client_message)`` → the steps to send instead
Rule = Callable[[dict[str, Any], dict[str, Any]], Sequence[Step]]
UUID = "5f1c3ad2-6a55-4d0e-9f3b-2f1b7e7c0a11"
GREETING = {"QMP": {"version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "fake"},
                    "capabilities": ["oob"]}}


def line(doc: Any) -> bytes:
    """One QMP message as QEMU writes it."""
    return json.dumps(doc).encode() + b"\r\n"


def _with_id(doc: dict[str, Any], message: dict[str, Any]) -> dict[str, Any]:
    if "id" in message:
        doc = {**doc, "id": message["id"]}
    return doc


def returns(value: Any) -> Rule:
    """Answer ``{"return": value}`` (with the client's id)."""
    return lambda default, msg: [line(_with_id({"return": value}, msg))]


def document(doc: Any, *, keep_id: bool = True) -> Rule:
    """Answer with ``doc`` as the whole reply (the client's id added when ``doc`` is an object)."""
    return lambda default, msg: [line(_with_id(doc, msg) if keep_id and isinstance(doc, dict) else doc)]


def raw(*steps: Step) -> Rule:
    """Send exactly ``steps``."""
    return lambda default, msg: list(steps)


def edit(change: Callable[[Any], Any]) -> Rule:
    """Answer the default reply with its ``return`` value passed through ``change``."""
    def rule(default: dict[str, Any], msg: dict[str, Any]) -> Sequence[Step]:
        if "return" not in default:
            return [line(default)]
        return [line({**default, "return": change(default["return"])})]
    return rule


def then(first: Sequence[Step], rule: Rule | None = None) -> Rule:
    """Send ``first`` (e.g. a sleep, events) and then what ``rule`` (default: the default reply) sends."""
    def combined(default: dict[str, Any], msg: dict[str, Any]) -> Sequence[Step]:
        return [*first, *(rule(default, msg) if rule is not None else [line(default)])]
    return combined


class _Backend(FakeQemu):
    """The fake VM, with the few commands hotluks asks that FakeQemu has no use for."""

    def _q_query_uuid(self, args: dict[str, Any]) -> Any:
        return {"UUID": UUID}

    def _q_query_cpus_fast(self, args: dict[str, Any]) -> Any:
        return []

    def _q_qom_get(self, args: dict[str, Any]) -> Any:
        parts = str(args.get("path")).split("/")
        device = self.state.devices.get(parts[-1]) if parts[:3] == ["", "machine", "peripheral"] else None
        if device is not None and args.get("property") == "parent_bus":
            bus = str(device.get("bus", "pcie.0")).split(".")[0]
            return f"/machine/peripheral/{bus}/{bus}"
        if device is not None and args.get("property") == "addr":
            return 0
        return super()._q_qom_get(args)

    def _q_query_named_block_nodes(self, args: dict[str, Any]) -> Any:
        return [{"node-name": n, "drv": v["driver"], "image": {"virtual-size": int(v.get("size", 1 << 20))}}
                for n, v in self.state.nodes.items()]

    def _q_block_resize(self, args: dict[str, Any]) -> Any:
        node = self.state.nodes.get(str(args.get("node-name")))
        if node is None:
            raise QMPCommandError("block_resize", "GenericError", f"Cannot find node {args.get('node-name')}")
        node["size"] = int(args.get("size", 0))
        return {}


class HostileQMP(ThreadedUnixServer):
    """See the module docstring."""

    thread_name = "hostile-qmp"

    def __init__(self, rules: dict[str, Rule] | None = None, *, greeting: Sequence[Step] | None = None,
                 capabilities: Rule | None = None, vm: FakeQemu | None = None):
        self.rules = dict(rules or {})
        self.greeting = greeting
        self.capabilities = capabilities
        self.vm = vm or _Backend()
        self.counts: dict[str, int] = {}
        self.received: list[dict[str, Any]] = []
        tmpdir = Path(tempfile.mkdtemp(prefix="hotluks-hostileqmp-"))
        super().__init__(tmpdir / "qmp.sock", tmpdir)

    # -- serving ------------------------------------------------------------------------------
    def executed(self) -> list[str]:
        return [str(m.get("execute")) for m in self.received]

    async def _send(self, writer: asyncio.StreamWriter, steps: Sequence[Step]) -> bool:
        """Send ``steps``; False once the connection is (to be) closed."""
        for step in steps:
            if step is CLOSE:
                return False
            if isinstance(step, float):
                await asyncio.sleep(step if step != HANG else 1e9)
                continue
            for start in range(0, len(step), 1 << 20):  # a giant line goes out in pieces
                writer.write(step[start:start + (1 << 20)])
                await writer.drain()
        return True

    async def _default(self, message: dict[str, Any]) -> dict[str, Any]:
        command = str(message.get("execute"))
        try:
            value = await self.vm.execute(command, message.get("arguments") or {})
        except QMPCommandError as exc:
            return _with_id({"error": {"class": exc.error_class, "desc": exc.desc}}, message)
        return _with_id({"return": value}, message)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        forward = events.put_nowait
        self.vm._queues.append(_Forward(forward))  # the fake VM's events reach this client
        pump = asyncio.create_task(self._pump_events(events, writer))
        try:
            if not await self._send(writer, [line(GREETING)] if self.greeting is None else self.greeting):
                return
            buffer = bytearray()
            negotiated = False
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buffer += data
                for message in split_messages(buffer):
                    self.received.append(message)
                    if not negotiated and message.get("execute") == "qmp_capabilities":
                        negotiated = True
                        ok = _with_id({"return": {}}, message)
                        steps = self.capabilities(ok, message) if self.capabilities else [line(ok)]
                    else:
                        steps = await self._answer(message)
                    if not await self._send(writer, steps):
                        return
        except (ConnectionError, OSError, asyncio.CancelledError):  # the client left, or stop()
            return
        finally:
            pump.cancel()
            with contextlib.suppress(BaseException):
                await pump
            self.vm._queues[:] = [q for q in self.vm._queues if getattr(q, "forward", None) is not forward]
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    async def _answer(self, message: dict[str, Any]) -> Sequence[Step]:
        command = str(message.get("execute"))
        self.counts[command] = self.counts.get(command, 0) + 1
        rule = self.rules.get(f"{command}@{self.counts[command]}") or self.rules.get(command)
        default = await self._default(message)
        return rule(default, message) if rule is not None else [line(default)]

    @staticmethod
    async def _pump_events(events: asyncio.Queue[dict[str, Any]], writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                event = await events.get()
                writer.write(line({**event, "timestamp": {"seconds": 0, "microseconds": 0}}))
                await writer.drain()


class _Forward(EventQueue):
    """The fake VM's event queue for one connection: hands every event to it."""

    def __init__(self, forward: Callable[[dict[str, Any]], None]):
        super().__init__()
        self.forward = forward

    def put(self, event: dict[str, Any]) -> None:
        self.forward(event)
