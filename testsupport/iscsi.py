"""Test fixture: a userspace iSCSI target (Debian's ``tgt``) on 127.0.0.1 with CHAP.

``tgtd`` runs in the foreground on a free TCP port with its own control port (so it never
meets a system tgtd), exports image files as LUNs 1..n of one target, admits only
127.0.0.1, and requires the CHAP account it is given. ``stop()`` ends it by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testsupport.nbd import free_port


@dataclass
class IscsiTarget:
    """A running tgtd exporting one target; LUN i+1 is ``images[i]``."""

    pid: int
    control_port: int
    port: int
    iqn: str
    username: str

    def source_xml(self, lun: int, secret_usage: str) -> str:
        return (f"<source protocol='iscsi' name='{self.iqn}/{lun}'><host name='127.0.0.1' port='{self.port}'/>"
                f"<auth username='{self.username}'><secret type='iscsi' usage='{secret_usage}'/></auth></source>")

    def stop(self, timeout: float = 10.0) -> None:
        """Ask tgtd to shut down (it ignores SIGTERM while it has targets), else kill it by PID."""
        for args in (["--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force"],
                     ["--op", "delete", "--mode", "system"]):
            subprocess.run(["tgtadm", "-C", str(self.control_port), *args], capture_output=True, timeout=30)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if os.waitpid(self.pid, os.WNOHANG)[0] == self.pid:  # our child: reap it
                    break
            except ChildProcessError:
                try:
                    os.kill(self.pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
        for leftover in (f"/var/run/tgtd/socket.{self.control_port}", f"/var/run/tgtd/socket.{self.control_port}.lock"):
            Path(leftover).unlink(missing_ok=True)


def _tgtadm(control_port: int, *args: str) -> None:
    proc = subprocess.run(["tgtadm", "-C", str(control_port), "--lld", "iscsi", *args], capture_output=True,
                          timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"tgtadm {' '.join(args[:4])} failed: {proc.stderr.decode(errors='replace')}")


def start_target(images: list[Path], workdir: Path, *, username: str, password_file: Path,
                 iqn: str = "iqn.2026-12.test.hotluks:headers") -> IscsiTarget:
    """Start tgtd serving ``images`` as LUNs 1.. of ``iqn``, CHAP ``username`` / the password in the file."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    control = 1000 + port % 20000  # a control socket of its own
    log = open(workdir / "tgtd.log", "wb")
    proc = subprocess.Popen(["tgtd", "-f", "-C", str(control), "--iscsi", f"portal=127.0.0.1:{port}"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    target = IscsiTarget(proc.pid, control, port, iqn, username)
    try:
        deadline = time.monotonic() + 15
        while not Path(f"/var/run/tgtd/socket.{control}").exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tgtd did not start: {(workdir / 'tgtd.log').read_text()[-500:]}")
            time.sleep(0.05)
        _tgtadm(control, "--op", "new", "--mode", "target", "--tid", "1", "-T", iqn)
        for lun, image in enumerate(images, start=1):
            _tgtadm(control, "--op", "new", "--mode", "logicalunit", "--tid", "1", "--lun", str(lun), "-b", str(image))
        _tgtadm(control, "--op", "bind", "--mode", "target", "--tid", "1", "-I", "127.0.0.1")
        password = password_file.read_text()
        _tgtadm(control, "--op", "new", "--mode", "account", "--user", username, "--password", password)
        _tgtadm(control, "--op", "bind", "--mode", "account", "--tid", "1", "--user", username)
    except BaseException:
        target.stop()
        raise
    return target
