"""All or nothing: a failure at any step leaves the VM exactly as before (RolledBackError, exit 1);
a failure during rollback is IncompleteError (exit 3) and ``repair`` then cleans up.

Real QEMU errors where they can be provoked (missing payload/header file, wrong passphrase
without preflight, a missing SCSI controller); otherwise an injected error, either in-process
(:class:`FaultyBackend` around a real QMPBackend) or on the wire (:class:`QMPProxy`).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import IncompleteError, RolledBackError
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.qmpproxy import QMPProxy, is_mutating
from testsupport.vms import (
    SHAPES,
    FaultyBackend,
    Monitor,
    Snapshot,
    TestDisk,
    journal_files,
    make_disk,
    run_cli,
    target_for,
)

pytestmark = pytest.mark.qemu

STEPS = {"detached-header-qcow2": 7, "detached-header-raw": 7, "attached-luks": 4, "qcow2-native": 4}


def _secrets(disk: TestDisk) -> dict[str, SecretValue]:
    return {disk.secret_key: SecretValue(disk.passphrase)}


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
@pytest.mark.parametrize("shape", SHAPES)
def test_failure_at_every_step_rolls_back(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                          state_dir: Path, shape: str, bus: str) -> None:
    """Fail step k (before QEMU ran it, and after: a lost reply) for every k: the VM is unchanged."""
    disk = make_disk(tmp_path, shape, target_for(bus, 0), bus)

    async def run() -> None:
        real = await QMPBackend(vm.qmp_path).connect()
        op = Operator(real, state_dir=state_dir)
        await op.capabilities()  # probed once; each trial swaps in a faulty wrapper of the same connection
        try:
            for k in range(1, STEPS[shape] + 1):
                for after in (False, True):
                    faulty = FaultyBackend(real, fail_at=k, after=after)
                    op.backend = faulty
                    with pytest.raises(RolledBackError) as info:
                        await op.attach(disk.disk(), _secrets(disk), preflight=(k == 1))
                    assert info.value.exit_code == 1
                    assert f"step {k}/{STEPS[shape]}" in str(info.value) and "injected failure" in str(info.value)
                    assert "the VM is as before" in str(info.value)
                    assert monitor.snapshot() == initial, (k, after)
                    assert not journal_files(state_dir), "a rolled-back attach leaves no record"
                    undone = faulty.mutations[k:]
                    # after=True: QEMU did run step k, so it is undone too
                    assert len(undone) == (k if after else k - 1)
            op.backend = real  # and a clean attach still works afterwards
            await op.attach(disk.disk(), _secrets(disk))
            await op.detach(disk.target, timeout=10)
        finally:
            await real.close()

    asyncio.run(run())
    assert monitor.snapshot() == initial


def _fail_nth_mutation(n: int, also: str | None = None) -> Any:
    """A proxy ``fail`` hook: fail the n-th mutating command (and every later ``also`` command)."""
    seen: list[str] = []

    def fail(number: int, message: dict[str, Any]) -> str | None:
        if not is_mutating(message):
            return None
        seen.append(str(message["execute"]))
        if len(seen) == n:
            return f"injected failure of {message['execute']}"
        if also is not None and len(seen) > n and message["execute"] == also:
            return f"injected undo failure of {also}"
        return None

    return fail


@pytest.mark.parametrize("shape", SHAPES)
def test_cli_injected_failure_exits_1(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                      state_dir: Path, shape: str) -> None:
    """Through the CLI (error injected on the wire): exit 1, VM unchanged, for every step of the shape."""
    disk = make_disk(tmp_path, shape, "vdb")
    for k in range(1, STEPS[shape] + 1):
        with QMPProxy(vm.qmp_path, fail=_fail_nth_mutation(k)) as proxy:
            proc = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir)
        assert proc.returncode == 1, (k, proc.stderr)
        assert f"step {k}/{STEPS[shape]}" in proc.stderr and "the VM is as before" in proc.stderr
        assert monitor.snapshot() == initial, k


def _cli_attach(vm: QemuProcess, disk: TestDisk, state_dir: Path, *extra: str) -> Any:
    return run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir, *extra)


def test_real_qemu_errors_roll_back(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                    state_dir: Path) -> None:
    """Errors QEMU itself raises at different steps: each is exit 1 with QEMU's message, VM unchanged."""
    gone = tmp_path / "does-not-exist.img"
    cases = [
        # payload file missing: blockdev-add of the payload protocol node fails (step 4)
        (make_disk(tmp_path / "a", "detached-header-qcow2", "vdb", overrides={"payload": gone}), [],
         "step 4/7", "No such file"),
        # header file missing (preflight off, else preflight refuses): step 2
        (make_disk(tmp_path / "b", "detached-header-raw", "vdb", overrides={"header": gone}), ["--no-preflight"],
         "step 2/7", "No such file"),
        # SCSI controller 7 does not exist: the very last step (device_add) fails, all 6 before are undone
        (make_disk(tmp_path / "c", "detached-header-raw", "sdb", "scsi",
                   address="<address type='drive' controller='7' bus='0' target='0' unit='1'/>"), [],
         "step 7/7", "scsi7.0"),
    ]
    for disk, extra, step, qemu_says in cases:
        proc = _cli_attach(vm, disk, state_dir, *extra)
        assert proc.returncode == 1, proc.stderr
        assert step in proc.stderr and qemu_says in proc.stderr and "the VM is as before" in proc.stderr
        assert monitor.snapshot() == initial
    # wrong passphrase: refused by preflight (exit 2, nothing sent) or, without preflight, by QEMU (exit 1)
    for shape, step in (("detached-header-raw", "step 6/7"), ("attached-luks", "step 3/4"),
                        ("qcow2-native", "step 3/4")):
        disk = make_disk(tmp_path / shape, shape, "vdc")
        disk.secret_file.write_bytes(b"not the passphrase")
        if shape != "qcow2-native":  # the qcow2-native header is inside qcow2 metadata: QEMU checks it
            refused = _cli_attach(vm, disk, state_dir)
            assert refused.returncode == 2 and "preflight" in refused.stderr, refused.stderr
        proc = _cli_attach(vm, disk, state_dir, "--no-preflight")
        assert proc.returncode == 1, proc.stderr
        assert step in proc.stderr and "Invalid password" in proc.stderr
        assert monitor.snapshot() == initial
    assert not journal_files(state_dir)


def test_rollback_failure_is_incomplete_then_repair(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                    tmp_path: Path, state_dir: Path) -> None:
    """Step 6 fails and the undo of every blockdev-del fails: IncompleteError (exit 3); repair cleans up."""
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")

    async def run() -> None:
        real = await QMPBackend(vm.qmp_path).connect()
        try:
            faulty = FaultyBackend(real, fail_at=6, fail_undo={"blockdev-del"})
            with pytest.raises(IncompleteError) as info:
                await Operator(faulty, state_dir=state_dir).attach(disk.disk(), _secrets(disk))
            assert info.value.exit_code == 3 and "hotluks repair" in str(info.value)
            assert "injected undo failure" in str(info.value)
            op = Operator(real, state_dir=state_dir)
            (status,) = await op.status()
            assert status["status"] == "needs-repair" and not status["consistent"]
            assert monitor.snapshot() != initial  # really left behind
            (action,) = await op.repair()
            assert action["action"] == "rolled back interrupted attach"
            assert await op.status() == [] and await op.repair() == []  # idempotent
        finally:
            await real.close()

    asyncio.run(run())
    assert monitor.snapshot() == initial


def test_cli_rollback_failure_exit_3_then_cli_repair(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                     tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "attached-luks", "sdb", "scsi")
    # one proxy (one socket path = one VM identity for the journal) for the whole scenario
    with QMPProxy(vm.qmp_path, fail=_fail_nth_mutation(4, also="object-del")) as proxy:
        common = ["--state-dir", str(state_dir)]
        proc = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), *common)
        assert proc.returncode == 3, proc.stderr
        assert "rollback incomplete" in proc.stderr and "hotluks repair" in proc.stderr
        assert monitor.snapshot().objects - initial.objects == {"hl-sdb-key"}
        proxy.fail = None
        status = run_cli("status", proxy.path, *common, "--json")
        (entry,) = json.loads(status.stdout)["disks"]
        assert entry["status"] == "needs-repair" and not entry["consistent"]
        blocked = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), *common)
        assert blocked.returncode == 2 and "repair" in blocked.stderr
        repair = run_cli("repair", proxy.path, *common)
        assert repair.returncode == 0, repair.stderr
        assert "object-del hl-sdb-key" in repair.stdout
        assert monitor.snapshot() == initial
        again = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), *common)
        assert again.returncode == 0, again.stderr  # usable again


def test_rollback_ignores_what_another_client_added_meanwhile(vm: QemuProcess, monitor: Monitor,
                                                              initial: Snapshot, tmp_path: Path,
                                                              state_dir: Path) -> None:
    """libvirt or a human may add nodes while hotluks rolls back: still a clean RolledBackError,
    and their node is left alone."""
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")

    async def foreign(backend: Any) -> None:
        await backend.execute("blockdev-add", {"node-name": "someone-else", "driver": "null-co"})

    async def run() -> None:
        real = await QMPBackend(vm.qmp_path).connect()
        try:
            faulty = FaultyBackend(real, fail_at=5, on_fail=foreign)
            with pytest.raises(RolledBackError, match="the VM is as before"):
                await Operator(faulty, state_dir=state_dir).attach(disk.disk(), _secrets(disk))
        finally:
            await real.close()

    asyncio.run(run())
    after = monitor.snapshot()
    assert after.nodes - initial.nodes == {"someone-else"} and after.objects == initial.objects
    assert after.devices == initial.devices and not journal_files(state_dir)
