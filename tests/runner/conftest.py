"""Fixtures for the runner's unit tests: a replaying fake monitor and a sample plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import MonitorBackend, QMPArgs, QMPCommandError

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[2]


class ReplayBackend(MonitorBackend):
    """Answers read-only commands from recorded replies (keyed ``"command [path [property]]"``)."""

    name = "qmp"
    vm = "/run/replay.sock"

    def __init__(self, replies: dict[str, Any]):
        super().__init__()
        self.replies = replies
        self.sent: list[str] = []

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        args = dict(arguments or {})
        key = " ".join([command, *(str(args[k]) for k in ("path", "property") if k in args)])
        self.sent.append(key)
        if key not in self.replies:
            raise QMPCommandError(command, "GenericError", f"no recorded reply for {key}")
        return json.loads(json.dumps(self.replies[key]))


@pytest.fixture
def recorded() -> Any:
    """``recorded(name)``: a ReplayBackend over tests/runner/data/NAME.json."""
    def load(name: str) -> ReplayBackend:
        return ReplayBackend(json.loads((DATA / f"{name}.json").read_text())["replies"])
    return load


@pytest.fixture
def example_xml() -> Path:
    return REPO / "xml" / "examples" / "qemu-doc-detached-qcow2.xml"
