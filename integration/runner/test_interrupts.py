"""Interruptions on real QEMU: asyncio cancellation of ``attach``, SIGINT and SIGTERM on the CLI at
points before and after the first change, and a detach of a paused guest (pending unplug).

After the first mutation an interruption ends in a verified rollback (exit 1 / RolledBackError) or a
recorded repair (exit 3); before it, in exit 2 with nothing sent. Never 130, never a traceback.
A QMP proxy delays every command so that the interruption lands inside the plan.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import RolledBackError
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.qmpproxy import QMPProxy, is_mutating
from testsupport.vms import Monitor, Snapshot, hotluks_cmd, journal_files, make_disk, run_cli

pytestmark = pytest.mark.qemu

DELAY_MS = 120


@pytest.mark.parametrize("after_s", [0.3, 0.9, 1.5])
def test_cancelling_attach_rolls_back(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                      state_dir: Path, after_s: float) -> None:
    """``asyncio.wait_for`` cancels the attach mid-plan: the VM ends as before, and the caller is told."""
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")

    async def go() -> BaseException:
        with QMPProxy(vm.qmp_path, delay_ms=DELAY_MS) as proxy:
            backend = await QMPBackend(proxy.path).connect()
            try:
                op = Operator(backend, state_dir=state_dir)
                try:
                    await asyncio.wait_for(op.attach(disk.disk(), {disk.secret_key: SecretValue(disk.passphrase)},
                                                     preflight=False), after_s)
                except BaseException as exc:  # noqa: BLE001 - the outcome is the subject
                    mutated = any(is_mutating(c) for c in list(proxy.commands))
                    assert isinstance(exc, RolledBackError if mutated else TimeoutError), (mutated, exc)
                    return exc
                raise AssertionError("attach finished before the cancellation")
            finally:
                await backend.close()

    exc = asyncio.run(go())
    assert monitor.snapshot() == initial
    assert not journal_files(state_dir)
    if isinstance(exc, RolledBackError):
        assert "interrupted" in str(exc) and "the VM is as before" in str(exc)


def _attach_then_signal(vm: QemuProcess, tmp_path: Path, state_dir: Path, sig: signal.Signals,
                        mutations_before: int, repeat: int = 1) -> subprocess.CompletedProcess[str]:
    disk = make_disk(tmp_path, "detached-header-qcow2", "vdb")
    with QMPProxy(vm.qmp_path, delay_ms=DELAY_MS) as proxy:
        proc = subprocess.Popen(hotluks_cmd("attach", proxy.path, disk.xml_path, *disk.cli_secret(),
                                            "--state-dir", state_dir, "--no-preflight", "--timeout", "10"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            if mutations_before == 0 and proxy.executed()[1:]:  # after the greeting: probing has begun
                break
            if mutations_before and sum(map(is_mutating, list(proxy.commands))) >= mutations_before:
                break
            time.sleep(0.01)
        for _ in range(repeat):
            proc.send_signal(sig)
            time.sleep(DELAY_MS / 1000 * 1.5)  # the next one lands while the rollback runs
        out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("mutations_before", [0, 3, 7])
def test_cli_signal_ends_in_rollback_or_refusal(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                tmp_path: Path, state_dir: Path, sig: signal.Signals,
                                                mutations_before: int) -> None:
    proc = _attach_then_signal(vm, tmp_path, state_dir, sig, mutations_before)
    assert "Traceback" not in proc.stderr and proc.returncode not in (70, 130), proc.stderr
    expected = 2 if mutations_before == 0 else 1
    assert proc.returncode == expected, proc.stderr
    assert sig.name in proc.stderr, proc.stderr
    if expected == 1:
        assert "the VM is as before" in proc.stderr
    assert monitor.snapshot() == initial
    assert not journal_files(state_dir)


def test_a_second_signal_does_not_stop_the_rollback(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                    tmp_path: Path, state_dir: Path) -> None:
    proc = _attach_then_signal(vm, tmp_path, state_dir, signal.SIGINT, 5, repeat=3)
    assert proc.returncode == 1 and "the VM is as before" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert monitor.snapshot() == initial and not journal_files(state_dir)


# -- a paused guest ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def booted() -> Iterator[object]:
    from hotluks.demo.guest.build import build_guest
    from hotluks.demo.guest.vm import boot_guest

    guest = boot_guest(build_guest(), qmp_sockets=2)
    try:
        yield guest
    finally:
        guest.stop()


@pytest.mark.guest
def test_detach_of_a_paused_guest_is_pending_then_repaired(booted: object, tmp_path: Path) -> None:
    """``stop`` the VM, detach --timeout: exit 3 (pending unplug, status 'detaching'); ``cont``; repair."""
    paths = booted.qmp_paths  # type: ignore[attr-defined]
    disk = make_disk(tmp_path, "attached-luks", "vdb")
    common = ["--state-dir", str(tmp_path / "state")]
    with Monitor(paths[1]) as monitor:
        before = monitor.snapshot()
        attach = run_cli("attach", paths[0], disk.xml_path, *disk.cli_secret(), *common)
        assert attach.returncode == 0, attach.stderr
        attached = monitor.snapshot()
        monitor.cmd("stop")
        try:
            detach = run_cli("detach", paths[0], "--target", "vdb", *common, "--timeout", "3")
            assert detach.returncode == 3, detach.stderr
            assert "did not release device hl-vdb" in detach.stderr and "hotluks repair" in detach.stderr
            assert monitor.snapshot() == attached  # nothing deleted under the device
            status = run_cli("status", paths[0], *common, "--json")
            assert status.returncode == 3
            (entry,) = json.loads(status.stdout)["disks"]
            assert entry["status"] == "detaching" and entry["needs_repair"]
        finally:
            monitor.cmd("cont")
        repair = run_cli("repair", paths[0], *common, "--timeout", "30", "--json")
        assert repair.returncode == 0, repair.stderr
        (action,) = json.loads(repair.stdout)["actions"]
        assert action["action"] == "finished detach"
        assert monitor.snapshot() == before
        final = run_cli("status", paths[0], *common)
        assert final.returncode == 0 and "no hotluks-managed disks" in final.stdout
