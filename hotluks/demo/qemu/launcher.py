"""Launch a throwaway QEMU process with a QMP socket, and stop it by PID.

Used by ``hotluks demo`` and by the test fixtures. The process is always
ended by its own PID (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hotluks.errors import BackendError

QEMU_BINARY = "qemu-system-x86_64"


def kvm_usable() -> bool:
    """True when /dev/kvm can be opened read-write."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def choose_accel(guest: bool) -> str:
    """Pick an accelerator: TCG for real guests unless HOTLUKS_ACCEL says otherwise.

    This machine class exposes a nested /dev/kvm that runs guest-less (-S) VMs but
    not a real kernel, so real guests default to TCG; ``HOTLUKS_ACCEL=kvm`` opts in.
    """
    forced = os.environ.get("HOTLUKS_ACCEL")
    if forced:
        return forced
    if not guest and kvm_usable():
        return "kvm:tcg"
    return "tcg"


@dataclass
class QemuProcess:
    """A running QEMU with a QMP UNIX socket in its own temporary directory."""

    args: list[str]
    workdir: Path
    qmp_path: Path
    popen: subprocess.Popen[bytes] | None = None
    stdout_path: Path | None = None
    extra_sockets: list[Path] = field(default_factory=list)

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def output(self) -> str:
        """QEMU's stdout+stderr so far (HMP ``qemu-io`` results land here)."""
        if self.stdout_path is None or not self.stdout_path.exists():
            return ""
        return self.stdout_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """End the process by PID (SIGTERM, then SIGKILL) and remove its directory."""
        if self.popen is not None and self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_socket(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BackendError(f"QEMU exited with status {proc.returncode} before its QMP socket appeared")
        if path.exists():
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(path))
                    return
                except OSError:
                    pass
        time.sleep(0.02)
    raise BackendError(f"QEMU's QMP socket {path} did not appear within {timeout:.0f}s")


def start_qemu(
    extra_args: Sequence[str] = (),
    *,
    machine: str = "q35",
    memory_mb: int = 256,
    guest: bool = False,
    accel: str | None = None,
    qmp_sockets: int = 1,
    workdir: Path | None = None,
    timeout: float = 15.0,
) -> QemuProcess:
    """Start QEMU in the background and return once each of its QMP sockets accepts connections.

    ``guest=False`` starts a paused (``-S``) guest-less VM. Each of ``qmp_sockets``
    QMP servers gets its own socket (``qmp.sock``, ``qmp1.sock``, ...). No QMP client
    is left connected: the caller connects with whatever backend it tests.
    """
    binary = shutil.which(QEMU_BINARY)
    if binary is None:
        raise BackendError(f"{QEMU_BINARY} not found; run scripts/setup-system.sh")
    workdir = Path(tempfile.mkdtemp(prefix="hotluks-vm-", dir=workdir))
    sockets = [workdir / ("qmp.sock" if i == 0 else f"qmp{i}.sock") for i in range(qmp_sockets)]
    args = [binary, "-nodefaults", "-display", "none", "-machine", f"{machine},accel={accel or choose_accel(guest)}"]
    args += ["-m", str(memory_mb)]
    for path in sockets:
        args += ["-qmp", f"unix:{path},server=on,wait=off"]
    if not guest:
        args.append("-S")
    args += list(extra_args)
    stdout_path = workdir / "qemu.out"
    with open(stdout_path, "wb") as out:
        popen = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    proc = QemuProcess(args=args, workdir=workdir, qmp_path=sockets[0], popen=popen, stdout_path=stdout_path,
                       extra_sockets=sockets[1:])
    try:
        deadline = time.monotonic() + timeout
        for path in sockets:  # QEMU creates them one after another: a test may use any of them at once
            _wait_for_socket(path, popen, max(deadline - time.monotonic(), 0.1))
    except BaseException:
        detail = proc.output().strip()
        proc.stop()
        if detail:
            raise BackendError(f"QEMU failed to start: {detail[-2000:]}") from None
        raise
    return proc
