"""Fixtures: the shared real libvirtd (started by the fixture when none runs)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.guest.build import GuestArtifacts, build_guest
from hotluks.demo.guest.vm import libvirt_boot_options
from testsupport.libvirtd import (
    QEMU_LOG_DIR,
    domain_xml,
    give_to_qemu,
    qemu_accessible_dir,
)
from testsupport.libvirtd import libvirt_daemon as libvirt_daemon  # the shared fixtures
from testsupport.libvirtd import libvirt_uri as libvirt_uri


@pytest.fixture(scope="session")
def guest_artifacts() -> GuestArtifacts:
    return build_guest()


@pytest.fixture
def files() -> Iterator[Path]:
    """A directory the domain's QEMU user can reach (kernel, disks, key files, agent socket)."""
    with qemu_accessible_dir() as path:
        yield path


class Virsh:
    """Plain `virsh` on one URI: the test's own view of libvirt, independent of hotluks."""

    def __init__(self, uri: str):
        self.uri = uri

    def __call__(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["virsh", "-q", "-c", self.uri, *args], capture_output=True, text=True,
                              timeout=timeout)

    def monitor(self, name: str, command: str, **arguments: Any) -> Any:
        """One QMP command through `virsh qemu-monitor-command`."""
        out = self("qemu-monitor-command", name, json.dumps({"execute": command, "arguments": arguments}))
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)["return"]

    def state(self, name: str) -> str:
        return self("domstate", name).stdout.strip()


@pytest.fixture
def virsh(libvirt_uri: str) -> Virsh:
    return Virsh(libvirt_uri)


@pytest.fixture
def guest_domain(libvirt_uri: str, guest_artifacts: GuestArtifacts, files: Path) -> Any:
    """``guest_domain(commandline=None)``: a context manager for :func:`defined_guest` on this daemon."""
    return lambda commandline=None: defined_guest(libvirt_uri, guest_artifacts, files, commandline)


@contextlib.contextmanager
def defined_guest(uri: str, artifacts: GuestArtifacts, files: Path, commandline: str | None = None) -> Iterator[str]:
    """A defined (persistent), running pc domain booting the tiny guest (agent on files/agent.sock).

    It has a 16 MiB qcow2 ``vda`` libvirt knows (internal snapshots need one for the VM state)
    and, optionally, a ``<qemu:commandline>`` block. Undefined with its managed save,
    snapshot and checkpoint metadata afterwards.
    """
    import libvirt
    from lxml import etree

    kernel, initrd = files / artifacts.kernel.name, files / artifacts.initrd.name
    for src, dst in ((artifacts.kernel, kernel), (artifacts.initrd, initrd)):
        shutil.copyfile(src, dst)
        give_to_qemu(dst)
    local = artifacts.__class__(artifacts.kernel_version, kernel, initrd, artifacts.modules, artifacts.bzimage)
    vda = files / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vda), "16M"], check=True)
    name = f"hotluks-lc-{uuid.uuid4().hex[:8]}"
    root = etree.fromstring(domain_xml(name, root_ports=0, **libvirt_boot_options(local, files / "agent.sock")))
    devices = root.find("devices")
    assert devices is not None
    disk = etree.SubElement(devices, "disk", type="file", device="disk")
    etree.SubElement(disk, "driver", name="qemu", type="qcow2")
    etree.SubElement(disk, "source", file=str(vda))
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    if commandline is not None:
        root.append(etree.fromstring(commandline))
    conn = libvirt.open(uri)
    dom = conn.defineXML(etree.tostring(root, encoding="unicode"))
    try:
        dom.create()
        yield name
    finally:
        try:
            dom = conn.lookupByName(name)
        except libvirt.libvirtError:
            dom = None  # migrated away (and undefined here): the test cleans up the destination
        if dom is not None:
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM
                              | libvirt.VIR_DOMAIN_UNDEFINE_CHECKPOINTS_METADATA)
        conn.close()
        (QEMU_LOG_DIR / f"{name}.log").unlink(missing_ok=True)


@dataclasses.dataclass
class PrivateLibvirtd:
    """A second libvirtd (+ virtlogd) in its own mount namespace, with its own hooks directory.

    libvirt's hooks directory, state, cache, logs and sockets are compiled-in paths, and
    hooks are only picked up at daemon start; so the test daemon gets them by bind
    mounts over those paths inside a private mount namespace (``unshare -m``). Its socket
    is reachable from outside at ``root/run/libvirt/libvirt-sock``. Stopped by PID.
    """

    root: Path
    popen: subprocess.Popen[bytes]

    @property
    def uri(self) -> str:
        return f"qemu+unix:///system?socket={self.root}/run/libvirt/libvirt-sock"

    @property
    def hooks(self) -> Path:
        return self.root / "hooks"

    def stop(self) -> None:
        pidfile = self.root / "libvirtd.pid"
        if self.popen.poll() is None and pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)
        shutil.rmtree(self.root, ignore_errors=True)


def start_private_libvirtd(prepare_hooks: Any = None, timeout: float = 120.0) -> PrivateLibvirtd:
    """Start the daemon; ``prepare_hooks(hooks_dir)`` runs first (hooks must exist at start)."""
    import libvirt

    root = Path(tempfile.mkdtemp(prefix="hotluks-libvirtd2-", dir="/var/tmp"))
    mounts = {"run": "/run", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt", "log": "/var/log/libvirt",
              "hooks": "/etc/libvirt/hooks", "etcqemu": "/etc/libvirt/qemu", "secrets": "/etc/libvirt/secrets"}
    for name in mounts:
        (root / name).mkdir()
    (root / "log" / "qemu").mkdir()
    if Path("/var/cache/libvirt/qemu").is_dir():  # reuse the capability probe of the shared daemon
        shutil.copytree("/var/cache/libvirt/qemu", root / "cache" / "qemu")
    if prepare_hooks is not None:
        prepare_hooks(root / "hooks")
    (root / "libvirtd.conf").write_text(f'log_outputs = "3:file:{root}/libvirtd.log"\nhost_uuid = "{uuid.uuid4()}"\n')
    script = ["set -e"] + [f"mount --bind {root / name} {target}" for name, target in mounts.items()] + [
        "mkdir -p /run/libvirt",
        f"virtlogd -p {root}/virtlogd.pid & VLOGD=$!",
        "set +e",
        f"libvirtd -f {root}/libvirtd.conf -p {root}/libvirtd.pid --timeout 900",
        "kill $VLOGD; wait",
    ]
    with open(root / "daemon.out", "wb") as out:
        popen = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", "\n".join(script)],
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    daemon = PrivateLibvirtd(root, popen)
    deadline = time.monotonic() + timeout
    while True:
        try:
            libvirt.open(daemon.uri).close()
            return daemon
        except libvirt.libvirtError:
            if popen.poll() is not None or time.monotonic() > deadline:
                detail = (root / "daemon.out").read_text(errors="replace")[-1000:]
                daemon.stop()
                raise RuntimeError(f"private libvirtd did not start: {detail}") from None
            time.sleep(0.2)


@pytest.fixture(scope="module")
def hooked_libvirtd() -> Iterator[PrivateLibvirtd]:
    """A private libvirtd started with hotluks' hook installed (by the CLI) in its hooks directory."""
    def install(hooks: Path) -> None:
        proc = subprocess.run([sys.executable, "-m", "hotluks", "hook", "install", "--hooks-dir", str(hooks)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr

    daemon = start_private_libvirtd(install)
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def guest_domain_at(guest_artifacts: GuestArtifacts, files: Path) -> Any:
    """``guest_domain_at(uri, commandline=None)``: :func:`defined_guest` on any daemon."""
    return lambda uri, commandline=None: defined_guest(uri, guest_artifacts, files, commandline)


@pytest.fixture
def virsh_at() -> Any:
    """``virsh_at(uri)``: a :class:`Virsh` on any daemon."""
    return Virsh
