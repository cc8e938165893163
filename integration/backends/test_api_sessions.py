"""The blocking API works from inside a running event loop (a private thread runs its loop)."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

import hotluks
from hotluks.demo.qemu.launcher import start_qemu

pytestmark = [pytest.mark.qemu]


def test_connect_inside_a_running_loop_works(tmp_path: Path) -> None:
    with start_qemu() as vm:
        async def main() -> tuple[str, list[object], bool]:
            ticks = 0

            async def ticker() -> None:  # the caller's loop is blocked only while a call runs
                nonlocal ticks
                while True:
                    ticks += 1
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(ticker())
            with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=tmp_path / "state") as session:
                status = session.status()
                name = session.backend_name
            await asyncio.sleep(0.05)
            task.cancel()
            return name, status, ticks > 0

        threads_before = threading.active_count()
        name, status, ticked = asyncio.run(main())
        assert (name, status, ticked) == ("qmp", [], True)
        assert threading.active_count() == threads_before  # the private loop thread ended with the session


def test_detach_of_an_unknown_target_is_already_absent(tmp_path: Path) -> None:
    """Idempotent detach (agents retry): a target hotluks never attached is success, not an error."""
    with start_qemu() as vm, hotluks.connect(str(vm.qmp_path), state_dir=tmp_path / "state") as session:
        result = session.detach("vdz")
    assert result.already_absent and result.target == "vdz" and result.removed == ()
    assert json.loads(json.dumps(result))["already_absent"] is True
