"""Header pinning against real QEMU and cryptsetup.

A header swapped on the same path (same passphrase, different volume key) is refused by a pinned
attach before any QMP mutation: the VM's block nodes, objects and devices are unchanged and no
mutating command was sent. A header changed legitimately with cryptsetup (luksAddKey, then
luksRemoveKey of the old passphrase) keeps its fingerprint and the pinned attach reads the plaintext.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from hotluks import luks
from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import PreflightError, WrongPassphraseError
from hotluks.luks.fingerprint import fingerprint
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.vms import FaultyBackend, Monitor, Snapshot, TestDisk, leaks, make_disk, qemu_io_read, run_cli

pytestmark = [pytest.mark.qemu, pytest.mark.cryptsetup]


def _pin(disk: TestDisk, value: str) -> None:
    """Add <fingerprint> to the disk's <header> element."""
    xml = disk.xml.replace("<driver type='raw'/></header>",
                           f"<driver type='raw'/><fingerprint type='sha256'>{value}</fingerprint></header>")
    assert "<fingerprint" in xml
    disk.xml_path.write_text(xml)


def _swap_header(header: Path, passphrase: bytes) -> None:
    """What an attacker with write access to the header's storage does: a new header, same passphrase."""
    tmp = header.with_suffix(".evil")
    payload = header.with_suffix(".evil-payload")
    payload.write_bytes(bytes(1 << 20))
    luks.format_volume(payload, passphrase, type="luks1", header=tmp, kdf=luks.make_kdf("pbkdf2", iterations=1000),
                       key_size=256)
    tmp.replace(header)
    payload.unlink()


def test_swapped_header_refused_before_any_mutation(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                    tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path / "d", "detached-header-raw", "vdb")
    assert disk.header is not None
    pinned = fingerprint(luks.open_header(disk.header)).value
    _pin(disk, pinned)
    _swap_header(disk.header, disk.passphrase)
    luks.unlock(disk.header, disk.passphrase)  # the swapped header does open with the passphrase

    async def run() -> list[str]:
        inner = await QMPBackend(vm.qmp_path).connect()
        spy = FaultyBackend(inner)  # fails nothing; records every mutating command sent
        try:
            with pytest.raises(PreflightError, match="not the pinned"):
                await Operator(spy, state_dir=state_dir).attach(disk.disk(), {disk.secret_key:
                                                                              SecretValue(disk.passphrase)})
            with pytest.raises(PreflightError, match="not the pinned"):  # --no-preflight does not skip a pin
                await Operator(spy, state_dir=state_dir).attach(disk.disk(), {disk.secret_key:
                                                                              SecretValue(disk.passphrase)},
                                                                preflight=False)
            return spy.mutations
        finally:
            await inner.close()

    assert asyncio.run(run()) == []
    assert monitor.snapshot() == initial

    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir)
    assert proc.returncode == 2, proc.stderr
    assert "not the pinned" in proc.stderr and pinned in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not leaks(disk.passphrase, [proc.stdout, proc.stderr])
    assert monitor.snapshot() == initial


def test_keyslot_changes_keep_the_pin(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                     state_dir: Path, cryptsetup: str) -> None:
    disk = make_disk(tmp_path / "d", "detached-header-raw", "vdc")
    assert disk.header is not None and disk.payload is not None
    cli_pin = run_cli("luks", "fingerprint", disk.payload, "--header", disk.header, "--json")
    assert cli_pin.returncode == 0, cli_pin.stderr
    pinned = json.loads(cli_pin.stdout)["fingerprint"]
    assert pinned == fingerprint(luks.open_header(disk.header)).value
    _pin(disk, pinned)

    new_key = tmp_path / "new.key"
    new_key.write_bytes(b"rotated passphrase 2")
    for args in (["luksAddKey", "--pbkdf-force-iterations", "1000", "--key-file", str(disk.secret_file),
                  "--header", str(disk.header), str(disk.payload), str(new_key)],
                 ["luksRemoveKey", "--header", str(disk.header), str(disk.payload), str(disk.secret_file)]):
        subprocess.run([cryptsetup, "--batch-mode", *args], check=True, capture_output=True, timeout=120)
    with pytest.raises(WrongPassphraseError):
        luks.unlock(disk.header, disk.passphrase)
    after = run_cli("luks", "fingerprint", disk.payload, "--header", disk.header)
    assert after.stdout.strip() == f"sha256:{pinned}"

    proc = run_cli("attach", vm.qmp_path, disk.xml_path, "--secret", f"{disk.secret_key}={new_key}",
                   "--state-dir", state_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert "matches its pinned fingerprint" in json.loads(proc.stdout)["preflight"]
    top = json.loads(proc.stdout)["top_node"]
    assert qemu_io_read(monitor, vm, top) == "ok"
    assert qemu_io_read(monitor, vm, top, pattern=0xCD) == "mismatch"
    proc = run_cli("detach", vm.qmp_path, "--target", "vdc", "--state-dir", state_dir)
    assert proc.returncode == 0, proc.stderr
    assert monitor.snapshot() == initial


def test_attach_pin_records_on_first_use_and_refuses_a_swap(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                            tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path / "d", "detached-header-raw", "vdd")
    assert disk.header is not None
    expected = fingerprint(luks.open_header(disk.header)).value
    common = [vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir]

    proc = run_cli("attach", *common, "--pin", "--json")  # first use: pins
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["header_fingerprint"] == expected
    status = run_cli("status", vm.qmp_path, "--state-dir", state_dir, "--json")
    assert json.loads(status.stdout)["disks"][0]["header_fingerprint"] == expected
    assert f"header pinned: sha256:{expected}" in run_cli("status", vm.qmp_path, "--state-dir", state_dir).stdout
    pins = list((state_dir / "pins").glob("*.json"))
    assert len(pins) == 1 and (pins[0].stat().st_mode & 0o077) == 0
    assert not leaks(disk.passphrase, [proc.stdout, proc.stderr, status.stdout, pins[0].read_bytes()])
    assert run_cli("detach", vm.qmp_path, "--target", "vdd", "--state-dir", state_dir).returncode == 0

    proc = run_cli("attach", *common, "--pin")  # same header again: matches the pin
    assert proc.returncode == 0, proc.stderr
    assert run_cli("detach", vm.qmp_path, "--target", "vdd", "--state-dir", state_dir).returncode == 0
    assert monitor.snapshot() == initial

    _swap_header(disk.header, disk.passphrase)
    proc = run_cli("attach", *common, "--pin")
    assert proc.returncode == 2, proc.stderr
    assert "pinned on first use" in proc.stderr and expected in proc.stderr
    assert monitor.snapshot() == initial
    assert json.loads(run_cli("status", vm.qmp_path, "--state-dir", state_dir, "--json").stdout)["disks"] == []
