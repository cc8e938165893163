"""Header control with a real TCG guest: it reads the plaintext of a disk whose detached header
comes from an NBD server with TLS and certificate authorisation (qemu-nbd on 127.0.0.1, started by
the fixture), and it keeps reading while ``hotluks rotate`` changes the disk's passphrase."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.demo.guest.build import build_guest
from hotluks.demo.guest.vm import BootedGuest, boot_guest
from hotluks.errors import WrongPassphraseError
from testsupport.nbd import make_x509, serve_header
from testsupport.vms import PATTERN, PATTERN_LEN, Monitor, hotluks_cmd, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]
PAYLOAD_MB = 2
CN = "hotluks-guest-host"


@pytest.fixture(scope="module")
def live_guest() -> Iterator[BootedGuest]:
    guest = boot_guest(build_guest(), qmp_sockets=2)
    try:
        yield guest
    finally:
        guest.stop()


def test_guest_reads_plaintext_through_an_nbd_tls_header(live_guest: BootedGuest, tmp_path: Path) -> None:
    if shutil.which("openssl") is None or shutil.which("qemu-nbd") is None:
        pytest.skip("openssl and qemu-nbd are needed")
    x509 = make_x509(tmp_path / "x509", (CN,))
    disk = make_disk(tmp_path / "disk", "detached-header-raw", "vdb", payload_mb=PAYLOAD_MB,
                     address="<serial>hl-nbd-tls</serial>")
    assert disk.header is not None
    served = tmp_path / "served" / "header.img"
    served.parent.mkdir()
    shutil.move(disk.header, served)  # the header now exists only behind the NBD server
    served.chmod(0o444)
    server = serve_header(served, tmp_path / "served", tls=x509, allow_dn=f"CN={CN}")
    try:
        xml = disk.xml
        start, end = xml.index("<header"), xml.index("</header>") + len("</header>")
        disk.xml_path.write_text(
            xml[:start] + f"<header type='network'><source protocol='nbd' name='hdr' tls='yes'>{server.host_xml()}"
            "</source><driver type='raw'/></header>" + xml[end:])
        qmp, state = f"unix:{live_guest.qmp_paths[0]}", tmp_path / "state"
        with Monitor(live_guest.qmp_paths[1]) as oracle:
            before = oracle.snapshot()
            proc = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state, "--json",
                           "--nbd-tls-dir", x509.client(CN))
            assert proc.returncode == 0, proc.stderr
            assert "nbd hdr opens" in json.loads(proc.stdout)["preflight"]
            agent = live_guest.agent
            dev = agent.wait_for_device("hl-nbd-tls", timeout=15)
            expected = bytes([PATTERN]) * PATTERN_LEN + bytes(PAYLOAD_MB * 1024 * 1024 - PATTERN_LEN)
            assert agent.sha256(dev.name) == hashlib.sha256(expected).hexdigest()
            detach = run_cli("detach", qmp, "--target", "vdb", "--state-dir", state, "--timeout", "15")
            assert detach.returncode == 0, detach.stderr
            agent.wait_device_gone("hl-nbd-tls", timeout=10)
            assert oracle.snapshot() == before
        assert not leaks(disk.passphrase, [proc.stdout, proc.stderr, detach.stdout, detach.stderr])
    finally:
        server.stop()


def test_guest_keeps_reading_while_the_passphrase_rotates(live_guest: BootedGuest, tmp_path: Path) -> None:
    disk = make_disk(tmp_path / "disk", "detached-header-raw", "vdc", payload_mb=PAYLOAD_MB,
                     address="<serial>hl-rotate</serial>")
    assert disk.header is not None
    new_key = tmp_path / "new.key"
    new_key.write_bytes(b"rotated in a live guest 3")
    qmp, state = f"unix:{live_guest.qmp_paths[0]}", tmp_path / "state"
    expected = hashlib.sha256(bytes([PATTERN]) * PATTERN_LEN + bytes(PAYLOAD_MB * 1024 * 1024 - PATTERN_LEN))
    with Monitor(live_guest.qmp_paths[1]) as oracle:
        before = oracle.snapshot()
        proc = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state)
        assert proc.returncode == 0, proc.stderr
        agent = live_guest.agent
        dev = agent.wait_for_device("hl-rotate", timeout=15)
        rotating = subprocess.Popen(hotluks_cmd("rotate", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir",
                                                state, "--new-key-file", new_key), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
        reads = 0
        while rotating.poll() is None or reads < 3:  # the guest reads the whole disk during and after
            assert agent.sha256(dev.name) == expected.hexdigest()
            reads += 1
        out, err = rotating.communicate(timeout=60)
        assert rotating.returncode == 0, err
        assert "rotated vdc" in out
        with pytest.raises(WrongPassphraseError):
            luks.unlock(disk.header, disk.passphrase)
        luks.unlock(disk.header, new_key.read_bytes())
        detach = run_cli("detach", qmp, "--target", "vdc", "--state-dir", state, "--timeout", "15")
        assert detach.returncode == 0, detach.stderr
        agent.wait_device_gone("hl-rotate", timeout=10)
        assert oracle.snapshot() == before
        again = run_cli("attach", qmp, disk.xml_path, "--secret", f"{disk.secret_key}={new_key}", "--state-dir",
                        state)
        assert again.returncode == 0, again.stderr
        dev = agent.wait_for_device("hl-rotate", timeout=15)
        assert agent.sha256(dev.name) == expected.hexdigest()
        detach = run_cli("detach", qmp, "--target", "vdc", "--state-dir", state, "--timeout", "15")
        assert detach.returncode == 0, detach.stderr
        agent.wait_device_gone("hl-rotate", timeout=10)
        assert oracle.snapshot() == before
    assert not leaks(disk.passphrase, [out, err]) and not leaks(new_key.read_bytes(), [out, err])
