"""Fixtures: one auth-none and (lazily) one cephx single-node Ceph cluster per session,
a guest-less QEMU with a synchronous QMP helper per test, and passphrase files.

The two cluster variants use different fixed ports, so they can run at once.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.base import QMPCommandError
from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess, start_qemu
from testsupport.ceph import DEFAULT_BASE_PORT, CephCluster, CephPortsBusyError

pytestmark = pytest.mark.ceph


def _need_tools() -> None:
    missing = [t for t in ("ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "qemu-io", "qemu-img")
               if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run scripts/setup-system.sh")


def _start_cluster(cephx: bool) -> CephCluster:
    """Start on the variant's default ports; when another run holds them (engineers share this
    host), fall back to the next port blocks. ``HOTLUKS_CEPH_BASE_PORT`` pins one block."""
    pinned = os.environ.get("HOTLUKS_CEPH_BASE_PORT")
    default = DEFAULT_BASE_PORT[cephx]
    bases = [int(pinned) + (100 if cephx else 0)] if pinned else [default, default + 1000, default + 2000]
    for base in bases:
        try:
            return CephCluster(cephx=cephx, base_port=base).start()
        except CephPortsBusyError:
            if base == bases[-1]:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def ceph_cluster() -> Iterator[CephCluster]:
    """Auth-none cluster, started once per session and stopped by PID at the end."""
    _need_tools()
    with _start_cluster(cephx=False) as cluster:
        print(f"\nceph (auth none, port {cluster.ports.base}) started in {cluster.start_seconds:.1f}s")
        yield cluster


@pytest.fixture(scope="session")
def cephx_cluster() -> Iterator[CephCluster]:
    """cephx cluster on its own ports, with client.hotluks limited to the rbd pool."""
    _need_tools()
    with _start_cluster(cephx=True) as cluster:
        print(f"\nceph (cephx, port {cluster.ports.base}) started in {cluster.start_seconds:.1f}s")
        yield cluster


@pytest.fixture(scope="session")
def passphrase() -> bytes:
    """A random passphrase per session; tests grep every captured output for it."""
    return b"hl-" + secrets.token_hex(12).encode()


@pytest.fixture(autouse=True)
def no_passphrase_in_output(capfd: pytest.CaptureFixture[str], passphrase: bytes) -> Iterator[None]:
    """Every test: the passphrase never shows up in what the test printed (stdout/stderr)."""
    yield
    out, err = capfd.readouterr()
    assert passphrase.decode() not in out + err
    print(out, end="")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private temp dir (not pytest's tmp_path: concurrent pytest runs on this host prune those)."""
    with tempfile.TemporaryDirectory(prefix="hotluks-cephtest-") as tmp:
        yield Path(tmp)


@pytest.fixture
def passfile(workdir: Path, passphrase: bytes) -> Path:
    path = workdir / "pass"
    path.write_bytes(passphrase)
    path.chmod(0o600)
    return path


@pytest.fixture
def wrong_passfile(workdir: Path) -> Path:
    path = workdir / "wrong"
    path.write_bytes(b"not-the-passphrase")
    return path


@pytest.fixture
def image_name(request: pytest.FixtureRequest) -> str:
    """An image name unique to the test (images are removed by the tests that create them)."""
    base = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[-40:]
    return f"t-{base}-{secrets.token_hex(3)}"


class QmpVM:
    """A guest-less QEMU driven synchronously over QMP (one private event loop)."""

    def __init__(self, proc: QemuProcess):
        self.proc = proc
        self.loop = asyncio.new_event_loop()
        self.backend = QMPBackend(proc.qmp_path, timeout=60.0)
        self.loop.run_until_complete(self.backend.connect())

    def qmp(self, command: str, arguments: dict[str, Any] | None = None) -> Any:
        return self.loop.run_until_complete(self.backend.execute(command, arguments))

    def qmp_error(self, command: str, arguments: dict[str, Any]) -> QMPCommandError:
        """Run a command that must fail; return QEMU's error."""
        with pytest.raises(QMPCommandError) as info:
            self.qmp(command, arguments)
        return info.value

    def qemu_io(self, node: str, command: str) -> str:
        """HMP ``qemu-io NODE "COMMAND"``; returns what it printed (monitor reply + QEMU stdout)."""
        before = len(self.proc.output())
        reply = self.qmp("human-monitor-command", {"command-line": f'qemu-io {node} "{command}"'})
        return str(reply) + self.proc.output()[before:]

    def node_names(self) -> set[str]:
        return {n["node-name"] for n in self.qmp("query-named-block-nodes")}

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.backend.close())
        finally:
            self.loop.close()
            self.proc.stop()


@pytest.fixture
def vm() -> Iterator[QmpVM]:
    """A fresh VM per test. List it *after* image fixtures in a test's arguments, so the VM
    (which may hold the image open) is stopped before the image is removed."""
    machine = QmpVM(start_qemu())
    try:
        yield machine
    finally:
        machine.close()
