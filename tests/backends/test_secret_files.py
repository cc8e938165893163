"""Secret files never block: FIFOs without a writer, silent writers, devices, odd names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from hotluks.errors import SecretError
from hotluks.secrets import MAX_SECRET_BYTES, read_secret_file


def test_a_pipe_with_data_is_read_byte_for_byte() -> None:
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"pass\xff\n")
        os.close(write_end)
        assert read_secret_file(f"/proc/self/fd/{read_end}").value == b"pass\xff\n"
    finally:
        os.close(read_end)


def test_fifos_and_devices_fail_fast(tmp_path: Path) -> None:
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    with pytest.raises(SecretError, match="empty"):
        read_secret_file(fifo)  # nobody writes
    writer = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer that stays silent
    try:
        with pytest.raises(SecretError, match="no data within 0.3s"):
            read_secret_file(fifo, wait=0.3)
    finally:
        os.close(writer)
    with pytest.raises(SecretError, match=f"larger than {MAX_SECRET_BYTES}"):
        read_secret_file("/dev/zero")
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("name", ["dir", "missing", "x" * 5000, "a\0b", "\ud800"])
def test_bad_paths_are_secret_errors(tmp_path: Path, name: str) -> None:
    path = tmp_path if name == "dir" else tmp_path / name
    with pytest.raises(SecretError, match="cannot read secret file"):
        read_secret_file(path)
