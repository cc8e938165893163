"""``hotluks rotate`` against a real QEMU: the VM keeps reading, only the new passphrase opens the
header afterwards (detach + re-attach proves it), and a fault injected at every rotation step
leaves a header that opens with the old passphrase only."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import RolledBackError, WrongPassphraseError
from hotluks.headers.rotate import STEPS, rotate
from hotluks.luks.fingerprint import fingerprint
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.schemas import validate
from testsupport.vms import Monitor, Snapshot, leaks, make_disk, qemu_io_read, run_cli

pytestmark = [pytest.mark.qemu]
NEW = b"the rotated passphrase 7"


def test_rotate_keeps_the_vm_reading_and_only_the_new_passphrase_opens(
        vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path / "d", "detached-header-raw", "vdb")
    assert disk.header is not None
    pin = fingerprint(luks.open_header(disk.header)).value
    new_file = tmp_path / "new.key"
    new_file.write_bytes(NEW)
    common = [vm.qmp_path, disk.xml_path, "--state-dir", state_dir]
    proc = run_cli("attach", *common, *disk.cli_secret(), "--json")
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["top_node"]

    rotated = run_cli("rotate", *common, *disk.cli_secret(), "--new-key-file", new_file, "--json")
    assert rotated.returncode == 0, rotated.stderr
    result = json.loads(rotated.stdout)
    validate("rotate", result)
    assert result["header_fingerprint"] == pin and not result["libvirt_secret_updated"]
    assert qemu_io_read(monitor, vm, top) == "ok"  # QEMU keeps the volume key: the disk still reads
    with pytest.raises(WrongPassphraseError):
        luks.unlock(disk.header, disk.passphrase)
    luks.unlock(disk.header, NEW)
    backup = Path(result["backup"])
    assert (backup.stat().st_mode & 0o077) == 0
    luks.unlock(backup, disk.passphrase)  # the backup is the header as it was
    assert not leaks(disk.passphrase, [rotated.stdout, rotated.stderr]) and not leaks(NEW, [rotated.stdout,
                                                                                               rotated.stderr])

    assert run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state_dir).returncode == 0
    old_again = run_cli("attach", *common, *disk.cli_secret())
    assert old_again.returncode == 2 and "passphrase does not open" in old_again.stderr
    assert monitor.snapshot() == initial
    again = run_cli("attach", *common, "--secret", f"{disk.secret_key}={new_file}", "--json")
    assert again.returncode == 0, again.stderr
    assert qemu_io_read(monitor, vm, json.loads(again.stdout)["top_node"]) == "ok"
    assert run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state_dir).returncode == 0
    assert monitor.snapshot() == initial


@pytest.mark.parametrize("step", [s for s in STEPS if s != "update-secret"])
def test_a_fault_at_any_step_leaves_the_old_passphrase(vm: QemuProcess, monitor: Monitor, tmp_path: Path,
                                                       state_dir: Path, step: str) -> None:
    disk = make_disk(tmp_path / "d", "detached-header-raw", "vdc")
    assert disk.header is not None
    secrets = {disk.secret_key: SecretValue(disk.passphrase)}

    def fault(at: str) -> None:
        if at == step:
            raise RuntimeError(f"injected fault at {at}")

    async def run() -> str:
        backend = await QMPBackend(vm.qmp_path).connect()
        try:
            op = Operator(backend, state_dir=state_dir)
            result = await op.attach(disk.disk(), secrets)
            with pytest.raises(RolledBackError, match=f"injected fault at {step}") as info:
                await rotate(op, disk.disk(), NEW, secrets, fault=fault)
            assert ("was restored" in str(info.value)) == (step == "verify-committed")
            return result.top_node
        finally:
            await backend.close()

    top = asyncio.run(run())
    luks.unlock(disk.header, disk.passphrase)
    with pytest.raises(WrongPassphraseError):
        luks.unlock(disk.header, NEW)
    assert not list(disk.header.parent.glob(".*rotate*"))  # no half-written copy left beside the header
    assert qemu_io_read(monitor, vm, top) == "ok"
    assert run_cli("detach", vm.qmp_path, "--target", "vdc", "--state-dir", state_dir).returncode == 0


def test_rotate_through_the_python_api(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                       state_dir: Path) -> None:
    import hotluks

    disk = make_disk(tmp_path / "d", "detached-header-raw", "vdd")
    assert disk.header is not None
    with hotluks.connect(str(vm.qmp_path), state_dir=state_dir) as session:
        top = session.attach(disk.disk(), secrets=disk.secrets()).top_node
        result = session.rotate(disk.disk(), NEW, secrets=disk.secrets())
        assert result.target == "vdd" and result.header == str(disk.header)
        assert qemu_io_read(monitor, vm, top) == "ok"
        session.detach("vdd")
    luks.unlock(disk.header, NEW)
    with pytest.raises(WrongPassphraseError):
        luks.unlock(disk.header, disk.passphrase)
    assert monitor.snapshot() == initial
