"""Secrets for child processes live in memory-only files: readable by the child, never left on a disk."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hotluks.memfile import memory_file

REPO = Path(__file__).resolve().parents[2]
SECRET = b"AQBmemfile-test-cephx-key=="


def test_the_child_reads_it_through_dev_fd_and_it_is_gone_after() -> None:
    with memory_file(SECRET) as (path, fd):
        assert path == f"/dev/fd/{fd}" and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert subprocess.run(["cat", path], pass_fds=(fd,), capture_output=True, check=True).stdout == SECRET
        assert subprocess.run(["cat", path], capture_output=True).returncode != 0  # not without pass_fds
    with pytest.raises(OSError):
        os.fstat(fd)


#: reads an RBD header with a key while `rbd` hangs; the test kills this process with SIGKILL
HOLDER = f"""
import sys
from hotluks import rbd_read
rbd_read.export_command = lambda loc, keyfile=None, **_: ["sh", "-c", "echo ready >&2; exec sleep 60"]
print("reading", flush=True)
rbd_read.read_image_head(rbd_read.RbdLocation(pool="p", image="i"), 512, key={SECRET!r}, timeout=60)
"""


def test_a_killed_reader_leaves_no_key_behind() -> None:
    before = set(os.listdir(tempfile.gettempdir()))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdout=subprocess.PIPE, env=env)
    children: list[int] = []
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"reading\n"
        deadline = time.monotonic() + 10
        while not children and time.monotonic() < deadline:  # the hanging `rbd`
            children = [int(p) for p in Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split()]
            time.sleep(0.02)
        assert children
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    new = sorted(set(os.listdir(tempfile.gettempdir())) - before)
    assert [n for n in new if n.startswith("hotluks-")] == [], new
