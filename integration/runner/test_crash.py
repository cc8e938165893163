"""Crash safety: SIGKILL of ``hotluks attach`` at random points, then ``hotluks repair``, always ends
consistent; QEMU dying mid-plan gives a clear error within the timeout instead of a hang.

A QMP proxy delays every command so that kills land inside the plan; the kill point is
"when the proxy has seen the n-th command of this attach, plus a random fraction of the delay".
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

import hotluks
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import HotluksError, IncompleteError
from hotluks.plan.planner import build_plan
from testsupport.qmpproxy import QMPProxy, is_mutating
from testsupport.vms import Monitor, Snapshot, TestDisk, hotluks_cmd, journal_files, make_disk, run_cli

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

TRIALS = 24
SEED = 20261122
DELAY_MS = 12


def _names(disk: TestDisk) -> frozenset[str]:
    plan = build_plan(disk.disk())
    return frozenset(plan.node_names + plan.object_ids + (plan.device_id,))


def test_sigkill_attach_at_random_points_then_repair(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                     tmp_path: Path, state_dir: Path) -> None:
    rng = random.Random(SEED)
    disks = [make_disk(tmp_path, "detached-header-qcow2", "vdb"),
             make_disk(tmp_path, "attached-luks", "sdb", "scsi")]
    outcomes: dict[str, int] = {"rolled-back": 0, "attached": 0, "untouched": 0}
    with QMPProxy(vm.qmp_path, delay_ms=DELAY_MS) as proxy:
        sock = str(proxy.path)  # one path for every command: one journal identity
        common = ["--state-dir", str(state_dir)]
        for trial in range(TRIALS):
            disk = rng.choice(disks)
            kill_at = rng.randint(1, 19)  # ~10 probe commands, then the 4 or 7 plan steps
            fraction = rng.random()
            proxy.delay_ms = DELAY_MS
            base = len(proxy.commands)
            attach = subprocess.Popen(hotluks_cmd("attach", sock, disk.xml_path, *disk.cli_secret(), *common),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            try:
                while not proxy.wait_for_commands(base + kill_at, timeout=0.05):
                    if attach.poll() is not None:
                        break
                time.sleep(fraction * DELAY_MS / 1000)
                finished_first = attach.poll() is not None
                attach.kill()
            finally:
                attach.wait(30)
                assert attach.stderr is not None
                stderr = attach.stderr.read().decode()
                attach.stderr.close()
            if finished_first:
                assert attach.returncode == 0, stderr
            proxy.delay_ms = 0
            repair = run_cli("repair", sock, *common, "--json", "--timeout", "10")
            assert repair.returncode == 0, (trial, repair.stdout, repair.stderr)
            snap = monitor.snapshot()
            with hotluks.connect(sock, state_dir=state_dir) as session:
                status = session.status()
                if snap == initial:
                    assert status == [], (trial, status)
                    actions = json.loads(repair.stdout)["actions"]
                    outcomes["rolled-back" if any(a["undone"] for a in actions) else "untouched"] += 1
                else:
                    # the disk is fully attached: every name present, nothing else, status consistent
                    assert snap.names() - initial.names() == _names(disk), (trial, snap)
                    assert initial.names() <= snap.names()
                    (entry,) = status
                    assert entry["status"] == "attached" and entry["consistent"], entry
                    outcomes["attached"] += 1
                    session.detach(disk.target, timeout=10)  # a later detach works
            assert monitor.snapshot() == initial, trial
            assert not journal_files(state_dir), "state dir not clean"
        final = run_cli("attach", sock, disks[0].xml_path, *disks[0].cli_secret(), *common)
        assert final.returncode == 0, final.stderr  # attach still works after all this
        assert run_cli("detach", sock, "--target", "vdb", *common).returncode == 0
    assert monitor.snapshot() == initial
    # the seeded kill points must have exercised both ends and the middle
    print("outcomes:", outcomes)
    assert outcomes["rolled-back"] >= 3 and outcomes["attached"] >= 2, outcomes


def _kill_qemu_at(vm: QemuProcess, mutation: int) -> Any:
    seen: list[int] = []

    def hook(number: int, message: dict[str, Any]) -> None:
        if is_mutating(message):
            seen.append(number)
            if len(seen) == mutation:
                os.kill(vm.pid, signal.SIGKILL)

    return hook


def test_qemu_killed_mid_plan_fails_fast_api(vm: QemuProcess, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    with QMPProxy(vm.qmp_path, on_command=_kill_qemu_at(vm, 3)) as proxy:
        with hotluks.connect(str(proxy.path), state_dir=state_dir, timeout=5) as session:
            started = time.monotonic()
            with pytest.raises(HotluksError) as info:
                session.attach(disk.xml_path, secrets=disk.secrets())
            assert time.monotonic() - started < 8
    assert isinstance(info.value, IncompleteError)  # nothing can be verified on a dead VM
    message = str(info.value)
    assert "step 3/7" in message and "connection to QEMU lost" in message, message
    assert vm.popen is not None and vm.popen.wait(5) == -signal.SIGKILL


def test_qemu_killed_mid_plan_fails_fast_cli(vm: QemuProcess, tmp_path: Path, state_dir: Path) -> None:
    disk = make_disk(tmp_path, "attached-luks", "sdb", "scsi")
    with QMPProxy(vm.qmp_path, on_command=_kill_qemu_at(vm, 2)) as proxy:
        started = time.monotonic()
        proc = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir,
                       "--timeout", "5", timeout=30)
        assert time.monotonic() - started < 15
    assert proc.returncode == 3, proc.stderr
    assert "step 2/4" in proc.stderr and "connection to QEMU lost" in proc.stderr
    assert "Traceback" not in proc.stderr
