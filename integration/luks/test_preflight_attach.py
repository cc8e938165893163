"""``hotluks attach`` against a real QEMU: the LUKS preflight refuses (exit 2, nothing sent to the VM)
a LUKS2 header for engine='qemu', a weak header, and a hostile KDF within ``--timeout``."""

from __future__ import annotations

import os
import shutil
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.luks import create
from hotluks.luks.kdf import KdfParams
from testsupport.vms import PASSPHRASE, Monitor, TestDisk, clear_templates, make_disk, run_cli, start_vm

pytestmark = pytest.mark.qemu


@pytest.fixture(scope="module")
def vm() -> Iterator[QemuProcess]:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (scripts/setup-system.sh)")
    proc = start_vm()
    try:
        yield proc
    finally:
        proc.stop()
        clear_templates()


@pytest.fixture
def monitor(vm: QemuProcess) -> Iterator[Monitor]:
    mon = Monitor(vm.extra_sockets[0])
    try:
        yield mon
    finally:
        mon.close()


def _disk_with_header(tmp_path: Path, blob: bytes) -> TestDisk:
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    header = next(p for p in disk.files if "hdr" in p.name or "header" in p.name)
    header.write_bytes(blob)
    return disk


def _attach(vm: QemuProcess, disk: TestDisk, tmp_path: Path, *extra: str) -> tuple[int, str, float]:
    start = time.monotonic()
    proc = run_cli("attach", f"unix:{vm.qmp_path}", disk.xml_path, *disk.cli_secret(), "--state-dir",
                   tmp_path / "state", *extra, timeout=120)
    assert "Traceback" not in proc.stderr and PASSPHRASE.decode() not in proc.stdout + proc.stderr
    return proc.returncode, proc.stderr, time.monotonic() - start


def _luks1(iterations: int = 1000) -> bytes:
    return create.build_luks1(os.urandom(32), PASSPHRASE, cipher="aes-xts-plain64", hash_name="sha256",
                              kdf_iterations=iterations, digest_iterations=1000, uuid="u", detached=True,
                              rand=os.urandom).blob


def test_luks2_header_with_engine_qemu_is_refused_up_front(vm: QemuProcess, monitor: Monitor, tmp_path: Path) -> None:
    before = monitor.snapshot()
    blob = create.build_luks2(os.urandom(64), PASSPHRASE, cipher="aes-xts-plain64",
                              kdf=KdfParams("pbkdf2", os.urandom(32), iterations=1000), digest_hash="sha256",
                              digest_iterations=1000, uuid="u", detached=True, sector_size=512,
                              rand=os.urandom).blob
    code, err, _ = _attach(vm, _disk_with_header(tmp_path, blob), tmp_path)
    assert code == 2 and "cryptsetup convert --type luks1" in err and "librbd" in err, err
    assert monitor.snapshot() == before


def test_weak_header_is_refused_unless_allowed_by_the_api(vm: QemuProcess, monitor: Monitor, tmp_path: Path) -> None:
    before = monitor.snapshot()
    code, err, _ = _attach(vm, _disk_with_header(tmp_path, _luks1(iterations=10)), tmp_path)
    assert code == 2 and "PBKDF2 with 10 iterations" in err and "--allow-weak-header" in err, err
    assert monitor.snapshot() == before


def test_hostile_kdf_is_cut_off_at_the_attach_timeout(vm: QemuProcess, monitor: Monitor, tmp_path: Path) -> None:
    before = monitor.snapshot()
    blob = bytearray(_luks1())
    blob[208 + 4:208 + 8] = struct.pack(">I", 2**31 - 1)  # keyslot 0: ~26 minutes of PBKDF2
    code, err, took = _attach(vm, _disk_with_header(tmp_path, bytes(blob)), tmp_path, "--timeout", "3")
    assert code == 2 and "timeout" in err, err
    assert took < 15, took
    assert monitor.snapshot() == before
