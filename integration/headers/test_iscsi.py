"""Detached header and payload on iSCSI LUNs behind CHAP (tgt on 127.0.0.1), through QEMU's iscsi driver.

The CHAP password is an ``iscsi`` secret like any other (sealed on the monitor when a master
key is known); preflight reads the header through iSCSI with it. A wrong CHAP password is
refused by preflight, or (without preflight) fails at the header's iscsi node and is rolled back.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.iscsi import IscsiTarget, start_target
from testsupport.vms import (
    Monitor,
    Snapshot,
    TestDisk,
    leaks,
    make_disk,
    qemu_io_read,
    run_cli,
    start_vm,
    write_master_key,
)

pytestmark = pytest.mark.qemu
CHAP = b"chap-secret-for-hotluks-1"
USAGE = "iscsi-chap-headers"


@pytest.fixture
def target(tmp_path: Path) -> Iterator[tuple[TestDisk, IscsiTarget]]:
    if shutil.which("tgtd") is None:
        pytest.skip("tgt is not installed (scripts/setup-system.sh)")
    staging = make_disk(tmp_path / "staging", "detached-header-raw", "vdb")
    assert staging.header is not None and staging.payload is not None
    lun_dir = tmp_path / "luns"
    lun_dir.mkdir()
    header, payload = lun_dir / "header.img", lun_dir / "payload.img"
    shutil.copyfile(staging.header, header)
    shutil.copyfile(staging.payload, payload)
    for image in (header, payload):  # whole 512-byte blocks for the LUN
        size = image.stat().st_size
        if size % 512:
            with open(image, "r+b") as f:
                f.truncate(size + 512 - size % 512)
    chap = tmp_path / "chap"
    chap.write_bytes(CHAP)
    server = start_target([header, payload], tmp_path / "tgt", username="hotluks", password_file=chap)
    try:
        xml = staging.xml
        xml = xml.replace("<disk type='file'", "<disk type='network'")
        start, end = xml.index("<source file="), xml.index("/>", xml.index("<source file=")) + 2
        xml = xml[:start] + server.source_xml(2, USAGE) + xml[end:]
        start, end = xml.index("<header"), xml.index("</header>") + len("</header>")
        xml = (xml[:start] + "<header type='network'>" + server.source_xml(1, USAGE) + "<driver type='raw'/></header>"
               + xml[end:])
        staging.xml_path.write_text(xml)
        yield staging, server
    finally:
        server.stop()


def _secrets(disk: TestDisk, chap_file: Path) -> list[str]:
    return [*disk.cli_secret(), "--secret", f"{USAGE}={chap_file}"]


def test_header_and_payload_on_iscsi_with_chap(target: tuple[TestDisk, IscsiTarget], vm: QemuProcess,
                                               monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                               state_dir: Path) -> None:
    disk, _ = target
    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *_secrets(disk, tmp_path / "chap"), "--state-dir", state_dir,
                   "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["preflight"].startswith("header on iscsi iqn.2026-12.test.hotluks:headers/1 opens")
    assert qemu_io_read(monitor, vm, result["top_node"]) == "ok"
    assert qemu_io_read(monitor, vm, result["top_node"], pattern=0xCD) == "mismatch"
    status = run_cli("status", vm.qmp_path, "--state-dir", state_dir)
    proc2 = run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state_dir)
    assert proc2.returncode == 0, proc2.stderr
    assert monitor.snapshot() == initial
    blobs = [proc.stdout, proc.stderr, status.stdout, proc2.stdout, proc2.stderr,
             *(p.read_bytes() for p in state_dir.rglob("*") if p.is_file())]
    assert not leaks(CHAP, blobs) and not leaks(disk.passphrase, blobs)


def test_wrong_chap_secret_is_refused_or_rolled_back(target: tuple[TestDisk, IscsiTarget], vm: QemuProcess,
                                                     monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                                     state_dir: Path) -> None:
    disk, _ = target
    wrong = tmp_path / "wrong-chap"
    wrong.write_bytes(b"not-the-chap-secret-999")
    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *_secrets(disk, wrong), "--state-dir", state_dir)
    assert proc.returncode == 2, proc.stderr
    assert "Authentication failure" in proc.stderr and "Traceback" not in proc.stderr
    assert monitor.snapshot() == initial

    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *_secrets(disk, wrong), "--state-dir", state_dir,
                   "--no-preflight", "--json")
    assert proc.returncode == 1, proc.stderr
    error = json.loads(proc.stdout)["error"]["message"]
    assert "(blockdev-add hl-vdb-hdr-proto) failed" in error and "rolled back" in error, error
    assert monitor.snapshot() == initial
    assert not leaks(b"not-the-chap-secret-999", [proc.stdout, proc.stderr])


def test_chap_secret_is_sealed_under_the_master_key(target: tuple[TestDisk, IscsiTarget], tmp_path: Path) -> None:
    disk, _ = target
    key = write_master_key(tmp_path / "master.key")
    sealed_vm = start_vm(master_key=key)
    try:
        with Monitor(sealed_vm.extra_sockets[0]) as mon:
            proc = run_cli("attach", sealed_vm.qmp_path, disk.xml_path, *_secrets(disk, tmp_path / "chap"),
                           "--state-dir", tmp_path / "state", "--master-key", key, "--json")
            assert proc.returncode == 0, proc.stderr
            for obj in ("hl-vdb-key", "hl-vdb-auth"):  # QEMU decrypted both with masterKey0
                assert mon.cmd("qom-get", {"path": f"/objects/{obj}", "property": "keyid"}) == "masterKey0"
            assert qemu_io_read(mon, sealed_vm, json.loads(proc.stdout)["top_node"]) == "ok"
            assert run_cli("detach", sealed_vm.qmp_path, "--target", "vdb", "--state-dir",
                           tmp_path / "state").returncode == 0
    finally:
        sealed_vm.stop()
