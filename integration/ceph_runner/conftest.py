"""Fixtures for hotluks against a real Ceph cluster: session clusters (auth none and cephx),
librbd-encrypted images formatted once per session per format (plaintext PATTERN at 0),
LUKS1 detached headers stored in RBD, guest-less QEMU VMs with the test's own monitor,
and ``<disk>`` XML writers.

Each librbd open costs seconds of KDF, so images are shared by the tests of a session;
a test that attaches one detaches it again (the image itself is never changed).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testsupport.ceph import CephCluster, CephPortsBusyError
from testsupport.vms import (
    PATTERN,
    PATTERN_LEN,
    Monitor,
    Snapshot,
    clear_templates,
    journal_files,
    leaks,
    make_disk,
)

pytestmark = pytest.mark.ceph

#: port blocks of this directory's clusters (integration/ceph uses 13300/13400)
BASE_PORT = {False: 13500, True: 13600}
IMAGE_MB = 32
#: rbd encryption format → libvirt/QMP format name
XML_FORMAT = {"luks1": "luks", "luks2": "luks2"}
PASS_USAGE = "hotluks-ceph-runner-pass"
CEPH_USAGE = "client.hotluks"


def _need_tools() -> None:
    missing = [t for t in ("ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "qemu-io",
                           "qemu-system-x86_64") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"missing {', '.join(missing)}: run scripts/setup-system.sh")


def start_cluster(cephx: bool, base: int | None = None) -> CephCluster:
    """Start on this directory's port block, or the next ones when another run holds it."""
    first = base if base is not None else BASE_PORT[cephx]
    bases = [first, first + 1000, first + 2000]
    for port in bases:
        try:
            return CephCluster(cephx=cephx, base_port=port, memstore_mb=512).start()
        except CephPortsBusyError:
            if port == bases[-1]:
                raise
    raise AssertionError("unreachable")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on (a dead mon)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_conf(cluster: CephCluster, dest: Path, *, mon_port: int | None = None, mount_timeout: int = 15) -> Path:
    """A minimal client ceph.conf readable by anyone (QEMU under libvirt runs as libvirt-qemu).

    ``mon_port`` points it at another port (e.g. a dead one: the cluster is "down").
    """
    auth = "cephx" if cluster.cephx else "none"
    mon = f"127.0.0.1:{mon_port}" if mon_port else cluster.ports.mon_addrv
    dest.write_text(f"[global]\nmon host = {mon}\nauth client required = {auth}\n"
                    f"client mount timeout = {mount_timeout}\nrados mon op timeout = {mount_timeout}\n"
                    "keyring = /dev/null\nlog file = /dev/null\nadmin socket =\n")
    dest.chmod(0o644)
    return dest


@dataclass
class Ceph:
    """A session cluster plus its lazily built images and shared files."""

    cluster: CephCluster
    files: Path
    passfile: Path
    #: rbd encryption format → image name (formatted, PATTERN written)
    librbd: dict[str, str]
    #: LUKS1 detached header in RBD ("header") and payload ("payload-rbd" in RBD, "payload-file" locally)
    detached: dict[str, str]

    @property
    def conf(self) -> Path:
        return self.cluster.conf_path

    def librbd_image(self, fmt: str) -> str:
        """An image encrypted by ``rbd encryption format`` (``luks1``/``luks2``) holding PATTERN at 0."""
        if fmt not in self.librbd:
            name = f"librbd-{fmt}-{secrets.token_hex(3)}"
            self.cluster.create_image(name, IMAGE_MB)
            self.cluster.encryption_format(name, fmt, self.passfile)
            self.cluster.write_plaintext(name, fmt, self.passfile, bytes([PATTERN]) * PATTERN_LEN)
            self.librbd[fmt] = name
        return self.librbd[fmt]

    def detached_header(self) -> dict[str, str]:
        """A LUKS1 detached header imported into RBD, its payload as a local file and in RBD."""
        if not self.detached:
            disk = make_disk(self.files / "detached", "detached-header-raw", "vdz",
                             passphrase=self.passfile.read_bytes())
            header, payload = disk.header, disk.payload
            assert header is not None and payload is not None
            suffix = secrets.token_hex(3)
            self.cluster.import_file(header, f"hdr-{suffix}")
            self.cluster.import_file(payload, f"payload-{suffix}")
            payload.chmod(0o644)
            self.detached.update({"header": f"hdr-{suffix}", "payload-rbd": f"payload-{suffix}",
                                  "payload-file": str(payload)})
        return self.detached


    # -- <disk> XML and secrets ------------------------------------------------------------
    def source_xml(self, image: str, *, conf: Path | None = None, hosts: bool = False) -> str:
        """``<source protocol='rbd'>`` with a ``<config>`` (default: the cluster's conf) or a ``<host>``."""
        cluster = self.cluster
        parts = []
        if hosts:
            parts.append(f"<host name='127.0.0.1' port='{cluster.ports.mon_v1}'/>")
        if cluster.cephx:
            parts.append(f"<auth username='{cluster.client_name}'><secret type='ceph' usage='{CEPH_USAGE}'/></auth>")
        if not hosts:
            parts.append(f"<config file='{conf or self.conf}'/>")
        return f"<source protocol='rbd' name='{cluster.pool}/{image}'>{''.join(parts)}</source>"

    def librbd_xml(self, image: str, fmt: str, target: str = "vdb", *, layers: int = 1,
                   conf: Path | None = None, hosts: bool = False) -> str:
        """A librbd-encrypted disk (``fmt``: luks, luks2, luks-any); ``layers`` > 1 adds parent secrets."""
        refs = "".join(f"<secret type='passphrase' usage='{PASS_USAGE}{f'-{i}' if i else ''}'/>"
                       for i in range(layers))
        return (f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
                f"{self.source_xml(image, conf=conf, hosts=hosts)}"
                f"<encryption format='{fmt}' engine='librbd'>{refs}</encryption>"
                f"<target dev='{target}' bus='virtio'/></disk>")

    def header_xml(self, header: str, payload: str, target: str = "vdc", *, payload_in_rbd: bool = False,
                   conf: Path | None = None, hosts: bool = False) -> str:
        """engine='qemu' LUKS1 whose detached header is an RBD image; payload in RBD or a local file."""
        hdr = f"<header type='network'>{self.source_xml(header, conf=conf, hosts=hosts)}<driver type='raw'/></header>"
        enc = (f"<encryption format='luks' engine='qemu'><secret type='passphrase' usage='{PASS_USAGE}'/>"
               f"{hdr}</encryption>")
        kind, source = ("network", self.source_xml(payload, conf=conf, hosts=hosts)) if payload_in_rbd else \
            ("file", f"<source file='{payload}'/>")
        return (f"<disk type='{kind}' device='disk'><driver name='qemu' type='raw'/>{source}{enc}"
                f"<target dev='{target}' bus='virtio'/></disk>")

    def secret_args(self, workdir: Path, passfile: Path | None = None) -> list[str]:
        """``--secret`` options: the passphrase, plus the cephx key file (base64 text) with cephx."""
        args = ["--secret", f"{PASS_USAGE}={passfile or self.passfile}"]
        if self.cluster.cephx:
            key = self.cluster.write_client_key(workdir / "client.key")
            args += ["--secret", f"{CEPH_USAGE}={key}"]
        return args

    def secrets(self, passphrase: bytes | None = None) -> dict[str, bytes]:
        """The same secrets for the Python API."""
        values = {PASS_USAGE: passphrase if passphrase is not None else self.passfile.read_bytes()}
        if self.cluster.cephx:
            values[CEPH_USAGE] = self.cluster.client_key.encode()
        return values

    def client_conf(self, dest: Path, *, dead: bool = False, mount_timeout: int = 15) -> Path:
        """:func:`client_conf` for this cluster; ``dead``: its mon host is a port nobody listens on."""
        return client_conf(self.cluster, dest, mon_port=free_port() if dead else None, mount_timeout=mount_timeout)


def _session(cephx: bool, passphrase: bytes) -> Iterator[Ceph]:
    _need_tools()
    files = Path(tempfile.mkdtemp(prefix="hotluks-cephrunner-", dir="/var/tmp"))
    files.chmod(0o711)
    passfile = files / "pass"
    passfile.write_bytes(passphrase)
    passfile.chmod(0o600)
    try:
        with start_cluster(cephx) as cluster:
            print(f"\nceph ({'cephx' if cephx else 'auth none'}, port {cluster.ports.base}) "
                  f"started in {cluster.start_seconds:.1f}s")
            yield Ceph(cluster, files, passfile, {}, {})
    finally:
        clear_templates()
        shutil.rmtree(files, ignore_errors=True)


@pytest.fixture(scope="session")
def passphrase() -> bytes:
    """A random passphrase per session; every test's captured output is checked for it."""
    return b"hl-" + secrets.token_hex(12).encode()


@pytest.fixture(scope="session")
def ceph(passphrase: bytes) -> Iterator[Ceph]:
    """Auth-none cluster (started once per session, stopped by PID at the end)."""
    yield from _session(False, passphrase)


@pytest.fixture(scope="session")
def cephx(passphrase: bytes) -> Iterator[Ceph]:
    """cephx cluster; ``client.hotluks`` reaches it only with the key hotluks hands QEMU."""
    yield from _session(True, passphrase)


@pytest.fixture(autouse=True)
def no_secret_in_output(capfd: pytest.CaptureFixture[str], passphrase: bytes) -> Iterator[None]:
    """The passphrase never shows up in what a test printed (stdout/stderr)."""
    yield
    out, err = capfd.readouterr()
    assert not leaks(passphrase, [out, err])
    print(out, end="")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A private temp dir (not tmp_path: concurrent pytest runs on this host prune those)."""
    with tempfile.TemporaryDirectory(prefix="hotluks-cephrunner-t-") as tmp:
        yield Path(tmp)


@pytest.fixture
def state_dir(workdir: Path) -> Path:
    return workdir / "state"


@pytest.fixture
def assert_unchanged(monitor: Monitor, initial: Snapshot, state_dir: Path) -> Callable[[], None]:
    """Call it to assert: the VM has exactly its initial nodes/objects/devices, no journal is left."""
    def check() -> None:
        assert monitor.snapshot() == initial
        assert journal_files(state_dir) == []
    return check


@pytest.fixture(scope="session")
def libvirt_uri() -> Iterator[str]:
    """A real libvirt daemon (shared with other test processes; the last one out stops it)."""
    from testsupport.libvirtd import start_libvirtd

    if shutil.which("libvirtd") is None:
        pytest.skip("libvirtd is not installed (scripts/setup-system.sh)")
    daemon = start_libvirtd()
    try:
        yield daemon.uri
    finally:
        daemon.stop()
