"""Fixtures for booting real QEMU with ``hotluks cold-cmdline`` output over real encrypted images.

Images are created by independent tools (cryptsetup, qemu-img) and the plaintext is
written by standalone ``qemu-io`` with hand-written ``--image-opts``, never through
hotluks' own block graph: a wrong plan cannot make its own data read back.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "xml" / "examples"
PASSPHRASE = b"hotluks it \xc3\xa9 'pass' $X\n"  # byte-exact: non-ASCII, quotes, trailing newline
PATTERN = 0xAB
LENGTH = 64 * 1024


def need(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (run scripts/setup-system.sh)")
    return path


def run(args: Sequence[str], *, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    """Run a tool; fail with its output unless it succeeds."""
    proc = subprocess.run(list(args), input=input, capture_output=True, timeout=120)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({proc.returncode}): "
                             f"{proc.stdout.decode(errors='replace')}{proc.stderr.decode(errors='replace')}")
    return proc


def hotluks(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``python -m hotluks ARGS`` as a real process; its output never holds the passphrase."""
    proc = run([sys.executable, "-m", "hotluks", *args])
    assert PASSPHRASE not in proc.stdout and PASSPHRASE not in proc.stderr
    assert PASSPHRASE.strip() not in proc.stdout and PASSPHRASE.strip() not in proc.stderr
    return proc


class Images:
    """Creates payloads and headers with cryptsetup and qemu-img, in one temp directory.

    Also the test's toolkit (test modules cannot import this conftest): constants,
    ``hotluks``/``plan`` runners, and ``rewrite`` for examples.
    """

    passphrase = PASSPHRASE
    pattern = PATTERN
    length = LENGTH
    hotluks = staticmethod(hotluks)
    need = staticmethod(need)

    def __init__(self, root: Path):
        self.root = root
        self.passfile = root / "passphrase"
        self.passfile.write_bytes(PASSPHRASE)
        self.loops: list[str] = []

    def rewrite(self, example: str, paths: dict[str, str], *, replace: dict[str, str] | None = None) -> Path:
        """Copy ``xml/examples/EXAMPLE.xml`` with its paths (and any other text) replaced."""
        text = (EXAMPLES / f"{example}.xml").read_text()
        for old, new in {**paths, **(replace or {})}.items():
            assert old in text, f"{old} not in {example}"
            text = text.replace(old, new)
        path = self.root / f"{example}.xml"
        path.write_text(text)
        return path

    @staticmethod
    def plan(xml: Path, *extra: str) -> dict[str, Any]:
        """``hotluks plan --json`` as a real process."""
        doc: dict[str, Any] = json.loads(hotluks("plan", "--json", str(xml), *extra).stdout)
        return doc

    def raw(self, name: str, mib: int = 4) -> Path:
        path = self.root / name
        with open(path, "wb") as fh:
            fh.truncate(mib * 1024 * 1024)
        return path

    def luks1(self, device: Path, header: Path | None = None) -> None:
        """``cryptsetup luksFormat --type luks1`` (attached, or detached into ``header``)."""
        extra = ["--header", str(header)] if header is not None else []
        run([need("cryptsetup"), "luksFormat", "--type", "luks1", "--batch-mode", "--key-file", str(self.passfile),
             "--pbkdf-force-iterations", "1000", *extra, str(device)])

    def qcow2(self, name: str, encrypted: bool = False) -> Path:
        path = self.root / name
        extra = []
        if encrypted:
            extra = ["--object", f"secret,id=sec0,file={self.passfile}",
                     "-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10"]
        run([need("qemu-img"), "create", "-q", "-f", "qcow2", *extra, str(path), "4M"])
        return path

    def loop(self, path: Path) -> str | None:
        """Attach ``path`` to a loop device, or None where loop devices are unavailable."""
        losetup = shutil.which("losetup")
        if losetup is None:
            return None
        proc = subprocess.run([losetup, "--find", "--show", str(path)], capture_output=True, timeout=30)
        if proc.returncode != 0:
            return None
        dev = proc.stdout.decode().strip()
        self.loops.append(dev)
        return dev

    def release(self) -> None:
        for dev in self.loops:
            subprocess.run(["losetup", "-d", dev], capture_output=True, timeout=30)
        self.loops.clear()

    def write_pattern(self, image_opts: str) -> None:
        """Write the plaintext pattern with standalone qemu-io (QEMU's block layer, not hotluks)."""
        out = run([need("qemu-io"), "--object", f"secret,id=sec0,file={self.passfile}", "--image-opts", image_opts,
                   "-c", f"write -P {PATTERN:#x} 0 {LENGTH}"]).stdout.decode()
        assert f"wrote {LENGTH}/{LENGTH} bytes at offset 0" in out, out


@pytest.fixture
def images(tmp_path: Path) -> Iterator[Images]:
    need("qemu-system-x86_64")
    imgs = Images(tmp_path)
    try:
        yield imgs
    finally:
        imgs.release()


class Monitor:
    """Synchronous QMP helper over :class:`QMPBackend` for one running QEMU."""

    def __init__(self, proc: QemuProcess):
        self.proc = proc
        self.loop = asyncio.new_event_loop()
        self.backend = self.loop.run_until_complete(QMPBackend(proc.qmp_path).connect())

    def __call__(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.loop.run_until_complete(self.backend.execute(command, arguments))

    def close(self) -> None:
        self.loop.run_until_complete(self.backend.close())
        self.loop.close()

    def qemu_io(self, node: str, command: str, timeout: float = 10.0) -> str:
        """Run HMP ``qemu-io`` on ``node``; its result is printed on QEMU's stdout, so read that."""
        before = len(self.proc.output())
        reply = self("human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
        deadline = time.monotonic() + timeout
        while True:
            new = self.proc.output()[before:] + str(reply)
            if " bytes at offset " in new or "error" in new.lower() or time.monotonic() > deadline:
                return new
            time.sleep(0.02)


@pytest.fixture
def monitor_for() -> Iterator[Any]:
    """``monitor_for(proc)`` connects a QMP monitor; every one is closed at teardown."""
    opened: list[Monitor] = []

    def connect(proc: QemuProcess) -> Monitor:
        mon = Monitor(proc)
        opened.append(mon)
        return mon

    yield connect
    for mon in opened:
        mon.close()
