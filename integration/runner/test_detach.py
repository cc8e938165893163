"""Detach: a guest that never releases the device gets a bounded, clear timeout and nothing is
deleted under the device (also during rollback and repair); a SIGKILLed detach is finished by
repair.

An i440fx (``pc``) VM that stays paused uses ACPI PCI hotplug: QEMU waits for the guest's
eject, which never comes, so ``DEVICE_DELETED`` never arrives.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hotluks
from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess, start_qemu
from hotluks.errors import IncompleteError
from hotluks.runner.operator import Operator
from hotluks.runner.transaction import UnplugPendingError
from hotluks.secrets import SecretValue
from testsupport.qmpproxy import QMPProxy
from testsupport.vms import FaultyBackend, Monitor, Snapshot, hotluks_cmd, journal_files, make_disk, run_cli

pytestmark = pytest.mark.qemu


@pytest.fixture
def acpi_vm() -> Iterator[QemuProcess]:
    proc = start_qemu([], machine="pc", qmp_sockets=2)
    try:
        yield proc
    finally:
        proc.stop()


def test_detach_times_out_and_deletes_nothing_under_the_device(acpi_vm: QemuProcess, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    common = ["--state-dir", str(tmp_path / "state")]
    with Monitor(acpi_vm.extra_sockets[0]) as monitor:
        assert run_cli("attach", acpi_vm.qmp_path, disk.xml_path, *disk.cli_secret(), *common).returncode == 0
        attached = monitor.snapshot()
        for attempt in range(2):  # the second attempt finds the unplug already pending: same answer
            started = time.monotonic()
            proc = run_cli("detach", acpi_vm.qmp_path, "--target", "vdb", *common, "--timeout", "1")
            assert time.monotonic() - started < 8, attempt
            assert proc.returncode == 3, proc.stderr  # the unplug request stays pending in QEMU
            assert "did not release device hl-vdb within 1s" in proc.stderr
            assert "nothing was deleted under it" in proc.stderr
            assert monitor.snapshot() == attached  # every node and the secret are still there
        listing = run_cli("status", acpi_vm.qmp_path, *common, "--json")
        assert listing.returncode == 3
        (entry,) = json.loads(listing.stdout)["disks"]
        assert entry["status"] == "detaching" and entry["needs_repair"] and "did not release" in entry["error"]


def test_rollback_and_repair_never_delete_under_a_held_device(acpi_vm: QemuProcess, tmp_path: Path) -> None:
    """device_add ran but its reply was 'lost': rollback must unplug, the guest never lets go."""
    disk = make_disk(tmp_path, "attached-luks", "vdb")
    state = tmp_path / "state"

    async def run() -> None:
        real = await QMPBackend(acpi_vm.qmp_path).connect()
        try:
            before = await Operator(real, state_dir=state).status()
            assert before == []
            faulty = FaultyBackend(real, fail_at=4, after=True)  # the 4th mutation is device_add
            started = time.monotonic()
            with pytest.raises(IncompleteError) as info:
                await Operator(faulty, state_dir=state).attach(disk.disk(), {disk.secret_key: SecretValue(
                    disk.passphrase)}, timeout=1)
            assert time.monotonic() - started < 8
            assert "did not release device hl-vdb" in str(info.value) and "hotluks repair" in str(info.value)
            op = Operator(real, state_dir=state)
            (entry,) = await op.status()
            assert entry["status"] == "detaching"  # device_del is pending in QEMU
            assert all(item["present"] for item in entry["items"])  # nothing deleted under the device
            (action,) = await op.repair(timeout=1)
            assert action["action"] == "incomplete" and "did not release" in action["error"]
            with pytest.raises(UnplugPendingError, match="repair"):
                await op.detach("vdb", timeout=1)  # still pending: the guest holds it
        finally:
            await real.close()

    asyncio.run(run())
    proc = run_cli("repair", acpi_vm.qmp_path, "--state-dir", state, "--timeout", "1")
    assert proc.returncode == 3 and "repair incomplete" in proc.stderr
    with Monitor(acpi_vm.extra_sockets[0]) as monitor:
        assert {"hl-vdb-proto", "hl-vdb-luks"} <= monitor.snapshot().nodes


def test_sigkill_detach_at_random_points_then_repair(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                     tmp_path: Path, state_dir: Path) -> None:
    rng = random.Random(4242)
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    finished_by_repair = 0
    with QMPProxy(vm.qmp_path) as proxy:
        sock = str(proxy.path)
        for trial in range(8):
            proxy.delay_ms = 0
            with hotluks.connect(sock, state_dir=state_dir) as session:
                session.attach(disk.disk(), disk.secrets(), preflight=False)
            proxy.delay_ms = 12
            base = len(proxy.commands)
            kill_at = rng.randint(2, 12)  # qmp_capabilities, status snapshot, device_del, ..., object-del
            detach = subprocess.Popen(hotluks_cmd("detach", sock, "--target", "vdb", "--state-dir", state_dir),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while not proxy.wait_for_commands(base + kill_at, timeout=0.05):
                if detach.poll() is not None:
                    break
            time.sleep(rng.random() * 0.012)
            detach.kill()
            detach.wait(30)
            proxy.delay_ms = 0
            repair = run_cli("repair", sock, "--state-dir", state_dir, "--json")
            assert repair.returncode == 0, (trial, repair.stderr)
            actions = json.loads(repair.stdout)["actions"]
            finished_by_repair += any(a["action"] == "finished detach" for a in actions)
            if monitor.snapshot() != initial:  # killed before the detach began: still fully attached
                with hotluks.connect(sock, state_dir=state_dir) as session:
                    (entry,) = session.status()
                    assert entry["status"] == "attached" and entry["consistent"], (trial, entry)
                    session.detach("vdb")
            assert monitor.snapshot() == initial, trial
            assert not journal_files(state_dir), trial
    assert finished_by_repair >= 2
