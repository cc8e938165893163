"""Detached headers served over NBD with TLS and client-certificate authorisation, for real.

qemu-nbd (started by the fixture, 127.0.0.1 or a UNIX socket) exports a throwaway overlay in
front of the header file, over TLS, admitting one certificate DN. hotluks adds the client
``tls-creds-x509`` object as a planned step, preflight reads the header through NBD with the
same credentials, QEMU decrypts the payload; a client whose certificate is not authorised is
refused by preflight, or (without preflight) fails at the header's nbd node and is rolled back.
Writes the VM makes to the header never reach the header file. Cold-boot arguments for the same
disk start a QEMU that reads it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.nbd_read import image_opts
from testsupport.nbd import NbdServer, X509Set, make_x509, serve_header
from testsupport.vms import (
    Monitor,
    Snapshot,
    TestDisk,
    hotluks_cmd,
    leaks,
    make_disk,
    qemu_io_read,
    run_cli,
    start_vm,
)

pytestmark = pytest.mark.qemu
GOOD, BAD = "hotluks-vm-good", "hotluks-vm-intruder"


@pytest.fixture(scope="module")
def x509(tmp_path_factory: pytest.TempPathFactory) -> Iterator[X509Set]:
    if shutil.which("openssl") is None or shutil.which("qemu-nbd") is None:
        pytest.skip("openssl and qemu-nbd are needed")
    root = tmp_path_factory.mktemp("x509")
    yield make_x509(root, (GOOD, BAD))
    shutil.rmtree(root, ignore_errors=True)


def _nbd_disk(tmp_path: Path, target: str, server: NbdServer, unix: bool) -> TestDisk:
    """A detached-header-raw disk whose <header> is the NBD export (TLS, libvirt grammar)."""
    disk = make_disk(tmp_path / "disk", "detached-header-raw", target)
    hostname = " tlsHostname='localhost'" if unix else ""
    header = (f"<header type='network'><source protocol='nbd' name='{server.export}' tls='yes'{hostname}>"
              f"{server.host_xml()}</source><driver type='raw'/></header>")
    xml = disk.xml
    start, end = xml.index("<header"), xml.index("</header>") + len("</header>")
    disk.xml_path.write_text(xml[:start] + header + xml[end:])
    return disk


@pytest.fixture(params=["tcp", "unix"])
def served(request: pytest.FixtureRequest, tmp_path: Path, x509: X509Set) -> Iterator[tuple[TestDisk, NbdServer]]:
    unix = request.param == "unix"
    staging = make_disk(tmp_path / "staging", "detached-header-raw", "vdz")
    assert staging.header is not None
    header = tmp_path / "served" / "header.img"
    header.parent.mkdir()
    shutil.copyfile(staging.header, header)
    header.chmod(0o444)
    server = serve_header(header, tmp_path / "served", tls=x509, allow_dn=f"CN={GOOD}", unix=unix)
    try:
        disk = _nbd_disk(tmp_path, "vdb", server, unix)
        shutil.copyfile(staging.payload or "", disk.payload or "")  # the payload that header encrypts
        yield disk, server
    finally:
        server.stop()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_attach_reads_plaintext_and_cannot_change_the_served_header(
        served: tuple[TestDisk, NbdServer], x509: X509Set, vm: QemuProcess, monitor: Monitor, initial: Snapshot,
        tmp_path: Path, state_dir: Path) -> None:
    disk, _ = served
    header_file = tmp_path / "served" / "header.img"
    before = _sha(header_file)
    env = {"HOTLUKS_NBD_TLS_DIR": str(x509.client(GOOD))}
    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, "--json",
                   env=env)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["preflight"].startswith("header on nbd hdr opens with the passphrase")
    assert [s["name"] for s in result["steps"]][:3] == ["hl-vdb-key", "hl-vdb-tls", "hl-vdb-hdr-proto"]
    objects = {o["name"]: o["type"] for o in monitor.cmd("qom-list", {"path": "/objects"})}
    assert objects.get("hl-vdb-tls") == "child<tls-creds-x509>"
    assert qemu_io_read(monitor, vm, result["top_node"]) == "ok"
    assert qemu_io_read(monitor, vm, result["top_node"], pattern=0xCD) == "mismatch"

    # inside the VM nothing but the luks driver may write the header (QEMU unshares write on it) …
    for node in ("hl-vdb-hdr-fmt", "hl-vdb-hdr-proto"):
        out = monitor.hmp(f'qemu-io {node} "write -P 0x55 0 4096"')
        assert "Permission conflict" in out, out
    # … and a client holding the same certificate that writes to the export only reaches the server's
    # throwaway overlay: the header file stays as it was
    source = disk.disk().encryption.header.source
    opts = image_opts(source, tls_id="c0")
    writer = subprocess.run(["qemu-io", "--object", f"tls-creds-x509,id=c0,dir={x509.client(GOOD)},endpoint=client",
                             "--image-opts", opts, "-c", "write -P 0x66 0 65536", "-c", "read -P 0x66 0 65536"],
                            capture_output=True, text=True, timeout=30)
    assert "wrote 65536/65536" in writer.stdout and "read 65536/65536" in writer.stdout, writer
    assert _sha(header_file) == before

    proc = run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state_dir)
    assert proc.returncode == 0, proc.stderr
    assert monitor.snapshot() == initial
    assert not leaks(disk.passphrase, [proc.stdout, proc.stderr])


def test_unauthorised_certificate_is_refused_and_rolled_back(
        served: tuple[TestDisk, NbdServer], x509: X509Set, vm: QemuProcess, monitor: Monitor, initial: Snapshot,
        state_dir: Path) -> None:
    disk, _ = served
    env = {"HOTLUKS_NBD_TLS_DIR": str(x509.client(BAD))}
    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, env=env)
    assert proc.returncode == 2, proc.stderr  # preflight reads through NBD with the same certificate
    assert "cannot read nbd hdr" in proc.stderr and "Traceback" not in proc.stderr
    assert monitor.snapshot() == initial

    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir,
                   "--no-preflight", "--json", env=env)
    assert proc.returncode == 1, proc.stderr
    error = json.loads(proc.stdout)["error"]["message"]
    assert "(blockdev-add hl-vdb-hdr-proto) failed" in error and "rolled back" in error, error
    assert monitor.snapshot() == initial
    assert json.loads(run_cli("status", vm.qmp_path, "--state-dir", state_dir, "--json").stdout)["disks"] == []


def test_cold_boot_arguments_start_a_qemu_that_reads_it(served: tuple[TestDisk, NbdServer], x509: X509Set,
                                                        tmp_path: Path) -> None:
    disk, _ = served
    proc = run_cli("cold-cmdline", disk.xml_path, *disk.cli_secret(), "--format", "json",
                   "--pci-root-bus", "pcie.0", "--nbd-tls-dir", x509.client(GOOD))
    assert proc.returncode == 0, proc.stderr
    argv = json.loads(proc.stdout)
    assert any('"qom-type":"tls-creds-x509"' in a for a in argv)
    cold = start_vm(extra=argv)
    try:
        with Monitor(cold.extra_sockets[0]) as mon:
            assert qemu_io_read(mon, cold, "hl-vdb-luks") == "ok"
    finally:
        cold.stop()


def test_header_serve_command_serves_one_authorised_client(x509: X509Set, tmp_path: Path) -> None:
    """``hotluks header serve`` (foreground qemu-nbd, the same recipe) admits only the allowed DN."""
    from hotluks.model import Host, Source
    from hotluks.nbd_read import NetworkReadError, read_network_head
    from testsupport.nbd import free_port

    staging = make_disk(tmp_path / "staging", "detached-header-raw", "vdy")
    assert staging.header is not None
    port = free_port()
    server = subprocess.Popen(hotluks_cmd("header", "serve", staging.header, "--tls-dir", x509.server,
                                          "--allow-dn", f"CN={GOOD}", "--listen", f"127.0.0.1:{port}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        source = Source(kind="network", protocol="nbd", name="hdr", hosts=(Host("127.0.0.1", port),), tls=True)
        deadline = time.monotonic() + 15
        while True:
            try:
                head = read_network_head(source, 1 << 20, tls_dir=str(x509.client(GOOD)), timeout=10)
                break
            except NetworkReadError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.1)
        assert head == staging.header.read_bytes()[:1 << 20]
        with pytest.raises(NetworkReadError, match="cannot read nbd hdr"):
            read_network_head(source, 4096, tls_dir=str(x509.client(BAD)), timeout=10)
    finally:
        server.terminate()  # by PID: the CLI exec'd qemu-nbd in place
        server.wait(timeout=10)


def test_header_and_payload_both_over_nbd_tls(served: tuple[TestDisk, NbdServer], x509: X509Set, vm: QemuProcess,
                                              monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                              state_dir: Path) -> None:
    """One client credentials object serves both nbd nodes (the payload from a second server)."""
    disk, header_server = served
    assert disk.payload is not None
    payload_server = serve_header(disk.payload, tmp_path / "payload-server", export="data", tls=x509,
                                  allow_dn=f"CN={GOOD}")
    try:
        xml = disk.xml.replace("<disk type='file'", "<disk type='network'")
        start = xml.index("<source file=")
        end = xml.index("/>", start) + 2
        xml = (xml[:start] + f"<source protocol='nbd' name='data' tls='yes'>{payload_server.host_xml()}</source>"
               + xml[end:])
        disk.xml_path.write_text(xml)
        env = {"HOTLUKS_NBD_TLS_DIR": str(x509.client(GOOD))}
        proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, "--json",
                       env=env)
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert [s["name"] for s in result["steps"]].count("hl-vdb-tls") == 1
        assert qemu_io_read(monitor, vm, result["top_node"]) == "ok"
        assert run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state_dir).returncode == 0
        assert monitor.snapshot() == initial
    finally:
        payload_server.stop()


def test_pinned_nbd_header_is_checked_through_nbd(served: tuple[TestDisk, NbdServer], x509: X509Set,
                                                  vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                  tmp_path: Path, state_dir: Path) -> None:
    """The pin of a network header is checked on the bytes read through NBD, before any QMP mutation."""
    from hotluks import luks
    from hotluks.luks.fingerprint import fingerprint

    disk, _ = served
    env = {"HOTLUKS_NBD_TLS_DIR": str(x509.client(GOOD))}
    right = fingerprint(luks.open_header(tmp_path / "served" / "header.img")).value
    other = make_disk(tmp_path / "other", "detached-header-raw", "vdx", passphrase=disk.passphrase + b"x")
    assert other.header is not None
    wrong = fingerprint(luks.open_header(other.header)).value
    base = disk.xml
    for pin, code in ((wrong, 2), (right, 0)):
        disk.xml_path.write_text(base.replace("<driver type='raw'/></header>", "<driver type='raw'/><fingerprint "
                                              f"type='sha256'>{pin}</fingerprint></header>"))
        proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, env=env)
        assert proc.returncode == code, proc.stderr
        if code == 2:
            assert "not the pinned" in proc.stderr
            assert monitor.snapshot() == initial
    assert run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state_dir).returncode == 0
    assert monitor.snapshot() == initial
