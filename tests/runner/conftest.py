"""Fixtures for the runner's unit tests: a replaying fake monitor and a sample plan."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import MonitorBackend, QMPArgs, QMPCommandError

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _remove_temp_files(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests leave no temp files behind (pytest would keep the last runs' tmp_path)."""
    path = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


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
