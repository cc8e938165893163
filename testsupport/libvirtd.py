"""A real libvirt daemon for tests, plus transient domains and secrets on it.

``start_libvirtd()`` reuses a daemon that already answers on ``qemu:///system``
(and then never stops it); otherwise it starts ``virtlogd`` and the monolithic
``libvirtd`` (libvirt 11 on Debian; the secret driver is the separate package
``libvirt-daemon-driver-secret``) as foreground child processes, with a private
``libvirtd.conf`` that logs into a temporary directory. Test processes running
at the same time share that daemon through a small registry; the last one to
leave ends the daemons by PID (never by name) and removes their files.

Host facts the fixture takes care of:

* ``/dev/kvm`` must be usable by the QEMU user (``libvirt-qemu``, group ``kvm``)
  or libvirt re-probes QEMU's capabilities on every call (a minute per domain
  start) and refuses ``type='kvm'``. Without udev nobody applies Debian's rule
  (``GROUP="kvm", MODE="0660"``), so the fixture applies it.
* QEMU runs as ``libvirt-qemu`` in a private ``/dev`` mount namespace: files
  added through the monitor (not through libvirt) must be readable by that user
  along their whole path; see :func:`qemu_accessible_dir`.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid as uuidlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hotluks.errors import BackendError

SYSTEM_URI = "qemu:///system"
QEMU_USER = "libvirt-qemu"
RUN_DIR = Path("/run/libvirt")
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
STATE_DIR = Path("/run/hotluks-libvirtd")
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"


def _open(uri: str) -> Any:
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)  # errors arrive as exceptions; no stderr noise
    return libvirt.open(uri)


def daemon_answers(uri: str = SYSTEM_URI) -> bool:
    """True when a libvirt daemon serves ``uri`` right now."""
    import libvirt

    try:
        conn = _open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
        return True
    except libvirt.libvirtError:
        return False
    finally:
        conn.close()


def fix_kvm_permissions(path: str = "/dev/kvm") -> None:
    """Apply Debian's udev rule for /dev/kvm (group kvm, mode 0660) when udev did not."""
    try:
        st = os.stat(path)
        gid = grp.getgrnam("kvm").gr_gid
    except (OSError, KeyError):
        return
    if st.st_gid != gid:
        os.chown(path, -1, gid)
    if st.st_mode & 0o660 != 0o660:
        os.chmod(path, (st.st_mode & 0o7777) | 0o660)


def _pid_running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _pid_is(pid: int, binary: str) -> bool:
    """True when ``pid`` runs ``binary`` (guards against a recycled PID)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return False
    return Path(argv0).name == binary


def _gone(pid: int, popen: subprocess.Popen[bytes] | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (popen is not None and popen.poll() is not None) or not _pid_running(pid):
            return True
        time.sleep(0.05)
    return False


def _stop_pid(pid: int, binary: str, timeout: float, popen: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM, then SIGKILL after ``timeout``, to ``pid`` if it still runs ``binary``; reap our child."""
    if _pid_is(pid, binary) and _pid_running(pid):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _gone(pid, popen, timeout):
                break
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=timeout)


def _socket_answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class _Registry:
    """Who uses the daemon hotluks started, shared by every test process on the host.

    ``daemon.json`` names the daemons (PIDs, work directory); ``users/`` holds
    one file per live :class:`LibvirtDaemon` (``<pid>-<n>``). All changes happen
    under an exclusive ``flock``; the last user out stops the daemons.
    """

    def __init__(self, root: Path = STATE_DIR):
        self.root = root
        self.users = root / "users"
        self.state = root / "daemon.json"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.users.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.state.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def save(self, data: dict[str, Any]) -> None:
        tmp = self.state.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.state)

    def live_users(self) -> list[str]:
        """User entries whose process still runs (entries of dead processes are removed)."""
        live = []
        for entry in self.users.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and _pid_running(int(pid)):
                live.append(entry.name)
            else:
                entry.unlink(missing_ok=True)
        return live

    def add_user(self) -> str:
        global _user_counter
        _user_counter += 1
        name = f"{os.getpid()}-{_user_counter}"
        (self.users / name).touch()
        return name

    def remove_user(self, name: str) -> None:
        (self.users / name).unlink(missing_ok=True)

    def clear(self) -> None:
        self.state.unlink(missing_ok=True)


_user_counter = 0
_popens: dict[int, subprocess.Popen[bytes]] = {}  # daemons this process spawned, to reap them


@dataclass
class LibvirtDaemon:
    """A libvirt daemon serving ``uri``.

    ``started`` is True when hotluks started it (in this or another test process):
    then ``stop()`` ends it by PID once no other user is left. A daemon found
    running without hotluks' record (a human's) is reused and never stopped.
    """

    uri: str = SYSTEM_URI
    started: bool = False
    workdir: Path | None = None
    daemon_pids: dict[str, int] = field(default_factory=dict)  # binary -> pid
    created_run_dir: bool = False
    user: str | None = None
    registry: _Registry = field(default_factory=_Registry)

    @property
    def pids(self) -> list[int]:
        return list(self.daemon_pids.values())

    def alive(self) -> bool:
        if not self.started:
            return daemon_answers(self.uri)
        return all(_pid_running(pid) for pid in self.pids)

    def log(self) -> str:
        """The daemon's log so far (only for a daemon hotluks started)."""
        if self.workdir is None:
            return ""
        path = self.workdir / "libvirtd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 15.0) -> None:
        """Leave the daemon; the last hotluks user stops libvirtd then virtlogd by PID and cleans up."""
        if not self.started or self.user is None:
            return
        with self.registry.locked():
            self.registry.remove_user(self.user)
            self.user = None
            if not self.registry.live_users():
                _shutdown(self.registry.load() or self._record(), timeout)
                self.registry.clear()
        self.started = False

    def _record(self) -> dict[str, Any]:
        return {"uri": self.uri, "pids": self.daemon_pids, "workdir": str(self.workdir or ""),
                "created_run_dir": self.created_run_dir}

    def __enter__(self) -> LibvirtDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _shutdown(record: dict[str, Any], timeout: float) -> None:
    """Stop the daemons of a registry record (libvirtd first) and remove their files."""
    pids: dict[str, int] = record.get("pids", {})
    for binary in ("libvirtd", "virtlogd"):
        pid = pids.get(binary)
        if pid is not None:
            _stop_pid(pid, binary, timeout, _popens.pop(pid, None))
    if record.get("workdir"):
        shutil.rmtree(record["workdir"], ignore_errors=True)
    if record.get("created_run_dir") and not any(_pid_is(p, b) for b, p in pids.items()):
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def _spawn(args: Sequence[str], out: Path) -> subprocess.Popen[bytes]:
    with open(out, "ab") as sink:
        popen = subprocess.Popen(list(args), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    _popens[popen.pid] = popen
    return popen


def _wait_socket(path: Path, popen: subprocess.Popen[bytes], what: str, deadline: float) -> None:
    while not _socket_answers(path):
        if popen.poll() is not None:
            raise BackendError(f"{what} exited with status {popen.returncode} during start-up")
        if time.monotonic() > deadline:
            raise BackendError(f"{what} did not answer on {path} in time")
        time.sleep(0.05)


def start_libvirtd(uri: str = SYSTEM_URI, *, timeout: float = 90.0, idle_exit: int = 1800) -> LibvirtDaemon:
    """Join the daemon hotluks runs, reuse a human's, or start virtlogd + libvirtd.

    Several test processes may call this at once; the registry under
    ``/run/hotluks-libvirtd`` makes them share one daemon, stopped by the last
    one to leave. ``idle_exit`` is libvirtd's ``--timeout``, a safety net for a
    killed test run (libvirtd exits once it has no client and no domain); a
    virtlogd left by such a run is stopped by the next start. The first start
    probes QEMU (~10 s); later ones reuse libvirt's capability cache.
    """
    registry = _Registry()
    with registry.locked():
        record = registry.load()
        pids: dict[str, int] = (record or {}).get("pids", {})
        ours = record is not None and all(_pid_is(pid, binary) for binary, pid in pids.items())
        if ours and daemon_answers(uri):
            assert record is not None
            return LibvirtDaemon(uri=uri, started=True, workdir=Path(record["workdir"]), daemon_pids=dict(pids),
                                 created_run_dir=bool(record.get("created_run_dir")), user=registry.add_user(),
                                 registry=registry)
        if record is not None:  # a killed run's leftovers: end them
            _shutdown(record, 10.0)
            registry.clear()
        if daemon_answers(uri):
            return LibvirtDaemon(uri=uri, started=False)
        daemon = _start_daemons(uri, timeout, idle_exit)
        daemon.registry = registry
        registry.save(daemon._record())
        daemon.user = registry.add_user()
        return daemon


def _start_daemons(uri: str, timeout: float, idle_exit: int) -> LibvirtDaemon:
    for binary in ("libvirtd", "virtlogd"):
        if shutil.which(binary) is None:
            raise BackendError(f"{binary} not found; run scripts/setup-system.sh")
    fix_kvm_permissions()
    workdir = Path(tempfile.mkdtemp(prefix="hotluks-libvirtd-"))
    daemon = LibvirtDaemon(uri=uri, started=True, workdir=workdir, created_run_dir=not RUN_DIR.exists())
    conf = workdir / "libvirtd.conf"
    conf.write_text(f'log_outputs = "3:file:{workdir}/libvirtd.log"\n')
    deadline = time.monotonic() + timeout
    try:
        if not _socket_answers(RUN_DIR / "virtlogd-sock"):
            virtlogd = _spawn(["virtlogd", "-p", str(workdir / "virtlogd.pid")], workdir / "virtlogd.out")
            daemon.daemon_pids["virtlogd"] = virtlogd.pid
            _wait_socket(RUN_DIR / "virtlogd-sock", virtlogd, "virtlogd", deadline)
        libvirtd = _spawn(["libvirtd", "-f", str(conf), "-p", str(workdir / "libvirtd.pid"),
                           "--timeout", str(idle_exit)], workdir / "libvirtd.out")
        daemon.daemon_pids["libvirtd"] = libvirtd.pid
        while not daemon_answers(uri):
            if libvirtd.poll() is not None:
                out = (workdir / "libvirtd.out").read_text(errors="replace").strip()
                raise BackendError(f"libvirtd exited with status {libvirtd.returncode}: {out[-1000:]}")
            if time.monotonic() > deadline:
                raise BackendError(f"libvirtd did not answer on {uri} within {timeout:.0f}s")
            time.sleep(0.1)
    except BaseException:
        _shutdown(daemon._record(), 10.0)
        raise
    return daemon


# --- transient domains ----------------------------------------------------------------------


def kvm_domains_work(conn: Any) -> bool:
    """True when libvirt accepts ``type='kvm'`` domains on this host."""
    import libvirt

    try:
        conn.getDomainCapabilities(None, "x86_64", None, "kvm", 0)
        return True
    except libvirt.libvirtError:
        return False


def domain_xml(
    name: str,
    *,
    virt_type: str = "qemu",
    machine: str = "q35",
    memory_mb: int = 128,
    root_ports: int = 4,
    scsi: bool = True,
    kernel: Path | None = None,
    initrd: Path | None = None,
    cmdline: str | None = None,
    serial_socket: Path | None = None,
    qemu_args: Sequence[str] = (),
) -> str:
    """Domain XML for a small disk-less VM with ACPI (PCI hotplug needs it).

    On q35, ``root_ports`` pcie-root-ports use native PCIe hotplug
    (``ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off``), so ``device_del``
    completes without a guest OS; ``scsi`` adds a virtio-scsi controller ``scsi0``,
    which libvirt plugs into ``pci.1``, leaving ``pci.2`` ... ``pci.<root_ports>`` free.
    """
    from lxml import etree

    dom = etree.Element("domain", type=virt_type, nsmap={"qemu": QEMU_NS})
    etree.SubElement(dom, "name").text = name
    etree.SubElement(dom, "memory", unit="MiB").text = str(memory_mb)
    etree.SubElement(dom, "vcpu").text = "1"
    os_el = etree.SubElement(dom, "os")
    etree.SubElement(os_el, "type", arch="x86_64", machine=machine).text = "hvm"
    for tag, value in (("kernel", kernel), ("initrd", initrd), ("cmdline", cmdline)):
        if value is not None:
            etree.SubElement(os_el, tag).text = str(value)
    features = etree.SubElement(dom, "features")
    etree.SubElement(features, "acpi")
    etree.SubElement(dom, "on_poweroff").text = "destroy"
    etree.SubElement(dom, "on_reboot").text = "destroy"
    etree.SubElement(dom, "on_crash").text = "destroy"
    devices = etree.SubElement(dom, "devices")
    args = list(qemu_args)
    if machine.startswith(("q35", "pc-q35")):
        etree.SubElement(devices, "controller", type="pci", index="0", model="pcie-root")
        for index in range(1, root_ports + 1):
            etree.SubElement(devices, "controller", type="pci", index=str(index), model="pcie-root-port")
        args = ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off", *args]
    if scsi:
        etree.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    etree.SubElement(devices, "controller", type="usb", model="none")
    etree.SubElement(devices, "memballoon", model="none")
    if serial_socket is not None:
        serial = etree.SubElement(devices, "serial", type="unix")
        etree.SubElement(serial, "source", mode="bind", path=str(serial_socket))
        etree.SubElement(serial, "target", port="0")
    if args:
        cmd = etree.SubElement(dom, f"{{{QEMU_NS}}}commandline")
        for arg in args:
            etree.SubElement(cmd, f"{{{QEMU_NS}}}arg", value=arg)
    return str(etree.tostring(dom, pretty_print=True, encoding="unicode"))


@dataclass
class TransientDomain:
    """A running (possibly paused) transient domain; ``destroy()`` ends it and removes its log."""

    name: str
    uri: str
    uuid: str
    xml: str
    _conn: Any = None

    def destroy(self) -> None:
        import libvirt

        if self._conn is None:
            return
        try:
            dom = self._conn.lookupByUUIDString(self.uuid)
            dom.destroy()
        except libvirt.libvirtError:
            pass  # already gone
        finally:
            self._conn.close()
            self._conn = None
        with contextlib.suppress(OSError):
            (QEMU_LOG_DIR / f"{self.name}.log").unlink()

    def qemu_pid(self) -> int | None:
        """PID of the domain's QEMU process, from libvirt's pid file."""
        try:
            return int((RUN_DIR / "qemu" / f"{self.name}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> TransientDomain:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def start_domain(
    uri: str = SYSTEM_URI,
    name: str | None = None,
    *,
    paused: bool = True,
    virt_type: str | None = None,
    **xml_options: Any,
) -> TransientDomain:
    """Create a transient domain (paused by default); ``kvm`` when usable for guest-less VMs.

    A real guest (``kernel=...``) defaults to TCG, like :func:`hotluks.demo.qemu.launcher.choose_accel`.
    """
    import libvirt

    name = name or f"hotluks-test-{uuidlib.uuid4().hex[:8]}"
    conn = _open(uri)
    try:
        if virt_type is None:
            forced = os.environ.get("HOTLUKS_ACCEL", "")
            guest = xml_options.get("kernel") is not None
            if forced.startswith("kvm") or (not forced and not guest and kvm_domains_work(conn)):
                virt_type = "kvm"
            else:
                virt_type = "qemu"
        xml = domain_xml(name, virt_type=virt_type, **xml_options)
        flags = libvirt.VIR_DOMAIN_START_PAUSED if paused else 0
        dom = conn.createXML(xml, flags)
    except libvirt.libvirtError as exc:
        conn.close()
        raise BackendError(f"cannot start domain {name}: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return TransientDomain(name=name, uri=uri, uuid=dom.UUIDString(), xml=xml, _conn=conn)


# --- secrets --------------------------------------------------------------------------------


@dataclass
class LibvirtSecret:
    """An ephemeral (never written to disk) libvirt secret; ``undefine()`` removes it."""

    uuid: str
    usage_type: str
    usage: str
    _conn: Any = None

    def undefine(self) -> None:
        import libvirt

        if self._conn is None:
            return
        try:
            self._conn.secretLookupByUUIDString(self.uuid).undefine()
        except libvirt.libvirtError:
            pass
        finally:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> LibvirtSecret:
        return self

    def __exit__(self, *exc: object) -> None:
        self.undefine()


def secret_xml(usage_type: str, usage: str, uuid: str, private: bool = False) -> str:
    """Secret XML: ``volume`` usage is a path, ``ceph`` a name."""
    from lxml import etree

    if usage_type not in ("volume", "ceph"):
        raise ValueError(f"unsupported secret usage type {usage_type!r}")
    sec = etree.Element("secret", ephemeral="yes", private="yes" if private else "no")
    etree.SubElement(sec, "uuid").text = uuid
    use = etree.SubElement(sec, "usage", type=usage_type)
    etree.SubElement(use, "volume" if usage_type == "volume" else "name").text = usage
    return str(etree.tostring(sec, encoding="unicode"))


def define_secret(uri: str, usage_type: str, usage: str, value: bytes, *, uuid: str | None = None,
                  private: bool = False) -> LibvirtSecret:
    """Define a secret (``volume`` for passphrases, ``ceph`` for cephx keys) holding ``value``."""
    import libvirt

    uuid = uuid or str(uuidlib.uuid4())
    conn = _open(uri)
    try:
        secret = conn.secretDefineXML(secret_xml(usage_type, usage, uuid, private), 0)
        secret.setValue(value, 0)
    except libvirt.libvirtError as exc:
        conn.close()
        raise BackendError(f"cannot define secret {usage_type}:{usage}: {exc}") from None
    return LibvirtSecret(uuid=uuid, usage_type=usage_type, usage=usage, _conn=conn)


# --- files QEMU opens through the monitor ---------------------------------------------------


@contextlib.contextmanager
def qemu_accessible_dir(parent: str = "/var/tmp") -> Iterator[Path]:
    """A temporary directory whose files the domain's QEMU user can reach (removed afterwards).

    Files libvirt does not know about keep their owner: chown them with
    :func:`give_to_qemu` before a ``blockdev-add`` through the monitor.
    """
    path = Path(tempfile.mkdtemp(prefix="hotluks-vmfiles-", dir=parent))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def give_to_qemu(path: Path) -> None:
    """Make ``path`` owned by the QEMU user (libvirt runs QEMU as ``libvirt-qemu``)."""
    user = pwd.getpwnam(QEMU_USER)
    os.chown(path, user.pw_uid, user.pw_gid)


# pytest fixtures, one copy: the integration/libvirt and integration/lifecycle conftests import them


@pytest.fixture(scope="session")
def libvirt_daemon() -> Iterator[LibvirtDaemon]:
    """The shared real libvirtd (started when none runs; stopped at the end if this session started it)."""
    daemon = start_libvirtd()
    yield daemon
    daemon.stop()


@pytest.fixture
def libvirt_uri(libvirt_daemon: LibvirtDaemon) -> str:
    if not libvirt_daemon.alive():  # e.g. libvirtd's idle --timeout ended it
        libvirt_daemon.stop()
        restarted = start_libvirtd(libvirt_daemon.uri)
        libvirt_daemon.__dict__.update(restarted.__dict__)
    return libvirt_daemon.uri


def guest_sha(files: Path, serial: str) -> str:
    """sha256 of the guest's disk with ``serial``, read through the demo guest's agent in ``files``."""
    from hotluks.demo.guest.agent import SyncGuestAgent

    with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
        agent.wait_ready(180)
        dev = agent.wait_for_device(serial, timeout=30)
        agent.command("drop-caches")
        return agent.sha256(dev.name)
