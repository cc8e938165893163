"""The line protocol between the host and the ``/init`` agent (pure).

Host → guest, one line per command: ``<id> <command> [arg ...]``. Ids are
alphanumeric and unique per client session. ``write DEV OFFSET NBYTES`` is
followed by one line of ``2*NBYTES`` lowercase hex digits, which the agent
reads in bulk (busybox ``read`` takes a byte per system call, slow under TCG). Guest → host, per command::

    @@HL:<id>:B            begin
    @@HL:<id>:| <text>     one line of output (stdout and stderr)
    @@HL:<id>:E:<status>   end, with the command's exit status

Markers are found anywhere in a line, so console noise before a marker (a
kernel message sharing the port) does not break a reply; lines without a
marker are noise. On start the agent prints ``@@HL:READY:<version>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PREFIX = "@@HL"
AGENT_VERSION = "1"
COMMANDS = frozenset({"ping", "ls-block", "sha256", "read", "write", "sync", "drop-caches", "dmesg"})

_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_ARG = re.compile(r"[A-Za-z0-9_.:/-]+")
_MARK = re.compile(rf"{PREFIX}:(?P<id>[A-Za-z0-9]+):(?:(?P<begin>B)$|\| ?(?P<text>.*)$|E:(?P<status>\d+)$)")
_READY = re.compile(rf"{PREFIX}:READY:(?P<version>\S+)")


@dataclass(frozen=True)
class Reply:
    """The finished answer to one command."""

    id: str
    status: int
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.status == 0


@dataclass(frozen=True)
class BlockDevice:
    """One line of ``ls-block``: a guest block device."""

    name: str
    size: int
    readonly: bool
    serial: str | None
    scsi_address: str | None

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"


def encode_write(cmd_id: str, dev: str, offset: int, data: bytes) -> bytes:
    """A ``write`` request: the command line, then the payload line."""
    return encode_command(cmd_id, "write", dev, offset, len(data)) + data.hex().encode() + b"\n"


def encode_command(cmd_id: str, command: str, *args: str | int) -> bytes:
    """One request line; rejects anything that could break the agent's word splitting."""
    if not _ID.fullmatch(cmd_id):
        raise ValueError(f"bad command id {cmd_id!r}")
    if command not in COMMANDS:
        raise ValueError(f"unknown agent command {command!r}")
    words = [str(arg) for arg in args]
    for word in words:
        if not _ARG.fullmatch(word):
            raise ValueError(f"bad agent argument {word!r}")
    return (" ".join([cmd_id, command, *words]) + "\n").encode()


@dataclass
class ReplyParser:
    """Incremental parser: feed raw lines, collect finished replies and noise."""

    _pending: dict[str, list[str]] = field(default_factory=dict)
    ready_versions: list[str] = field(default_factory=list)

    def feed(self, line: str) -> Reply | None:
        """Consume one line (without its newline); return a reply when one completes."""
        line = line.rstrip("\r")
        ready = _READY.search(line)
        if ready:
            self.ready_versions.append(ready.group("version"))
            return None
        match = _MARK.search(line)
        if match is None:
            return None
        cmd_id = match.group("id")
        if match.group("begin"):
            self._pending[cmd_id] = []
            return None
        if match.group("status") is not None:
            lines = self._pending.pop(cmd_id, [])
            return Reply(cmd_id, int(match.group("status")), tuple(lines))
        self._pending.setdefault(cmd_id, []).append(match.group("text") or "")
        return None


def parse_block_devices(lines: tuple[str, ...] | list[str]) -> list[BlockDevice]:
    """Parse ``ls-block`` output: ``NAME SIZE RO SERIAL HCTL`` (``-`` for none)."""
    devices = []
    for line in lines:
        words = line.split()
        if len(words) != 5 or not words[1].isdigit():
            continue
        name, size, ro, serial, hctl = words
        devices.append(BlockDevice(name, int(size), ro == "1", None if serial == "-" else serial,
                                   None if hctl == "-" else hctl))
    return devices


def parse_sha256(lines: tuple[str, ...]) -> str:
    """The hex digest from ``sha256`` output."""
    for line in lines:
        word = line.split()[0] if line.split() else ""
        if re.fullmatch(r"[0-9a-f]{64}", word):
            return word
    raise ValueError("no sha256 digest in agent output")


def parse_hex(lines: tuple[str, ...]) -> bytes:
    """The bytes of ``read`` output (hex, possibly split over lines)."""
    return bytes.fromhex("".join(line.strip() for line in lines))
