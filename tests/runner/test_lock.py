"""The per-VM lock: contention between processes (flock) and between tasks of one event loop."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hotluks.errors import LockedError
from hotluks.runner.lock import vm_lock

HOLDER = """
import asyncio, sys
from pathlib import Path
from hotluks.runner.lock import vm_lock

async def main():
    async with vm_lock(Path(sys.argv[1]), 10):
        print("locked", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


def _holder(lock_dir: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


async def _acquire(lock_dir: Path, timeout: float) -> float:
    started = time.monotonic()
    async with vm_lock(lock_dir, timeout):
        return time.monotonic() - started


def test_second_process_waits_then_times_out_and_takes_over_after_holder_dies(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(LockedError, match="another hotluks process holds") as info:
            asyncio.run(_acquire(tmp_path, 0.4))
        assert 0.35 < time.monotonic() - started < 3
        assert info.value.exit_code == 2
        holder.send_signal(signal.SIGKILL)  # a SIGKILLed holder releases the lock with its fd
        holder.wait(10)
        assert asyncio.run(_acquire(tmp_path, 2)) < 1
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_waiter_gets_the_lock_when_the_holder_releases(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        async def wait_for_it() -> float:
            task = asyncio.create_task(_acquire(tmp_path, 10))
            await asyncio.sleep(0.3)
            assert not task.done()  # really blocked by the other process
            assert holder.stdin is not None
            holder.stdin.write("\n")
            holder.stdin.flush()
            return await task

        assert asyncio.run(wait_for_it()) >= 0.3
        assert holder.wait(10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_tasks_of_one_loop_are_serialized(tmp_path: Path) -> None:
    events: list[str] = []

    async def worker(name: str) -> None:
        async with vm_lock(tmp_path, 5):
            events.append(f"{name}+")
            await asyncio.sleep(0.05)
            events.append(f"{name}-")

    async def main() -> None:
        await asyncio.gather(*(worker(n) for n in "abc"))

    asyncio.run(main())
    assert [e[-1] for e in events] == ["+", "-"] * 3  # never two holders at once
    assert sorted(events[::2]) == ["a+", "b+", "c+"]


def test_task_timeout_names_the_cause(tmp_path: Path) -> None:
    async def main() -> None:
        async with vm_lock(tmp_path, 5):
            await _acquire(tmp_path, 0.2)

    with pytest.raises(LockedError, match="another operation on this VM is still running"):
        asyncio.run(main())


def test_contention_in_successive_event_loops(tmp_path: Path) -> None:
    """Each asyncio.run() is a new loop (often at a recycled address): locks must not outlive theirs."""

    async def contend() -> None:
        async def worker() -> None:
            async with vm_lock(tmp_path, 5):
                await asyncio.sleep(0.01)

        await asyncio.gather(worker(), worker())

    for _ in range(6):
        asyncio.run(contend())
