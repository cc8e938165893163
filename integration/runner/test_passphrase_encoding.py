"""QEMU's LUKS driver only accepts UTF-8 passphrases: hotluks refuses others up front (exit 2)."""

from __future__ import annotations

from pathlib import Path

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.vms import Monitor, MonitorError, Snapshot, make_disk, run_cli

BINARY_PASSPHRASE = b"\xff\xfe binary \x80 key"


def test_qemu_itself_rejects_a_non_utf8_secret_for_luks(vm: QemuProcess, monitor: Monitor, tmp_path: Path) -> None:
    """The fact behind the check, shown on the real QEMU."""
    disk = make_disk(tmp_path, "attached-luks", "vdb", passphrase=BINARY_PASSPHRASE)
    payload = next(p for p in disk.files if p.suffix == ".luks")
    monitor.cmd("object-add", {"qom-type": "secret", "id": "s0", "file": str(disk.secret_file)})
    try:
        monitor.cmd("blockdev-add", {"node-name": "bin-luks", "driver": "luks", "key-secret": "s0",
                                     "file": {"driver": "file", "filename": str(payload)}})
    except MonitorError as exc:
        assert "UTF-8" in str(exc)
    else:
        raise AssertionError("QEMU accepted a non-UTF-8 LUKS passphrase")
    finally:
        monitor.cmd("object-del", {"id": "s0"})


def test_non_utf8_passphrase_is_refused_before_touching_the_vm(vm: QemuProcess, monitor: Monitor,
                                                                initial: Snapshot, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-raw", "vdb", passphrase=BINARY_PASSPHRASE)
    for extra in ([], ["--no-preflight"]):
        proc = run_cli("attach", f"unix:{vm.qmp_path}", disk.xml_path, *disk.cli_secret(),
                       "--state-dir", tmp_path / "state", *extra)
        assert proc.returncode == 2, proc.stderr
        assert "not valid UTF-8" in proc.stderr and "Traceback" not in proc.stderr
        assert monitor.snapshot() == initial
