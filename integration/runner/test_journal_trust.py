"""The journal as a trust boundary, as an unprivileged user against root's hotluks (issue 14, 1/2/7).

``nobody`` cannot write root's state directory; a directory nobody *can* write (world-writable, or
owned by another user) is refused with the reason; a forged record with a ``migrate exec:`` undo on
``pc.ram`` never reaches QEMU, is quarantined by ``repair`` and blocks only its own target; a symlink
planted as a record never makes root write through it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.runner.journal import vm_dirname
from testsupport.vms import Monitor, Snapshot, make_disk, run_cli

pytestmark = [pytest.mark.qemu, pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as nobody")]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A root-owned 0755 directory ``nobody`` can look into (pytest's own tmp dirs are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="hotluks-trust-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c",
                           code, *args], capture_output=True, text=True, timeout=30)


PLANT = """
import json, os, sys
d = sys.argv[1]
os.makedirs(d, exist_ok=True)
json.dump({"vm": "x", "target": "vdb", "device": "pc.ram", "shape": "attached-luks", "status": "needs-repair",
           "steps": [{"kind": "device", "role": "device", "name": "pc.ram", "execute": "device_add",
                      "arguments": {"id": "pc.ram"},
                      "undo": {"execute": "migrate", "arguments": {"uri": "exec:id > " + sys.argv[2]}}}]},
          open(os.path.join(d, "vdb.json"), "w"))
os.symlink(sys.argv[3], os.path.join(d, "vdc.json"))
print("planted")
"""


def _vm_dir(state: Path, vm: QemuProcess) -> Path:
    """Where hotluks keeps this VM's records: named by the VM's identity, whoever computes it."""
    async def key() -> str:
        backend = await QMPBackend(vm.qmp_path).connect()
        try:
            return (await backend.identity()).key
        finally:
            await backend.close()
    return state / vm_dirname(asyncio.run(key()))


def _plant(state: Path, vm: QemuProcess, tmp_path: Path) -> tuple[Path, Path]:
    pwned, victim = tmp_path / "pwned", tmp_path / "victim"
    victim.write_text("root's file")
    proc = as_nobody(PLANT, str(_vm_dir(state, vm)), str(pwned), str(victim))
    assert proc.returncode == 0 and "planted" in proc.stdout, proc.stderr
    return pwned, victim


def test_nobody_cannot_write_roots_state_dir(vm: QemuProcess, tmp_path: Path, shared: Path) -> None:
    state = shared / "state"
    assert run_cli("status", vm.qmp_path, "--state-dir", state).returncode == 0
    disk = make_disk(tmp_path, "attached-luks", "vdb")
    assert run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", state).returncode == 0
    denied = as_nobody(PLANT, str(next(state.glob("*-*"))), "/tmp/x", "/etc/passwd")
    assert denied.returncode != 0 and "PermissionError" in denied.stderr
    assert run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state).returncode == 0


@pytest.mark.parametrize("weakness", ["world-writable", "owned-by-nobody"])
def test_a_directory_others_can_write_is_refused(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                 tmp_path: Path, shared: Path, weakness: str) -> None:
    state = shared / "state"
    state.mkdir(mode=0o700)
    if weakness == "world-writable":
        state.chmod(0o777)
    else:
        os.chown(state, 65534, 65534)
    pwned, victim = _plant(state, vm, shared)
    for command in (["repair", vm.qmp_path], ["detach", vm.qmp_path, "--target", "vdb"], ["status", vm.qmp_path]):
        proc = run_cli(*command, "--state-dir", state)
        assert proc.returncode == 2, (command, proc.stdout, proc.stderr)
        assert "refusing" in proc.stderr and ("writable by group or others" in proc.stderr
                                              or "owned by uid 65534" in proc.stderr), proc.stderr
        assert "Traceback" not in proc.stderr
    assert not pwned.exists() and victim.read_text() == "root's file"
    assert monitor.snapshot() == initial


def test_a_forged_record_is_quarantined_and_never_sent(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                       tmp_path: Path) -> None:
    """Even in a trusted directory (root wrote it: a bug, a restored backup), undo is never replayed."""
    state = tmp_path / "state"
    pwned, victim = tmp_path / "pwned", tmp_path / "victim"
    victim.write_text("root's file")
    vm_dir = _vm_dir(state, vm)
    vm_dir.mkdir(parents=True, mode=0o700)
    state.chmod(0o700)
    forged = {"vm": "x", "target": "vdb", "device": "pc.ram", "shape": "attached-luks", "status": "needs-repair",
              "steps": [{"kind": "device", "role": "device", "name": "pc.ram", "execute": "device_add",
                         "arguments": {"id": "pc.ram"},
                         "undo": {"execute": "migrate", "arguments": {"uri": f"exec:id > {pwned}"}}}]}
    (vm_dir / "vdb.json").write_text(json.dumps(forged))
    (vm_dir / "vdc.json").symlink_to(victim)
    status = run_cli("status", vm.qmp_path, "--state-dir", state, "--json")
    assert status.returncode == 3
    assert {d["target"]: d["status"] for d in json.loads(status.stdout)["disks"]} == {"vdb": "corrupt",
                                                                                       "vdc": "corrupt"}
    detach = run_cli("detach", vm.qmp_path, "--target", "vdb", "--state-dir", state)
    assert detach.returncode == 2 and "corrupt" in detach.stderr
    other = make_disk(tmp_path, "attached-luks", "vdd")  # another target is not blocked
    attach = run_cli("attach", vm.qmp_path, other.xml_path, *other.cli_secret(), "--state-dir", state)
    assert attach.returncode == 0, attach.stderr
    repair = run_cli("repair", vm.qmp_path, "--state-dir", state, "--json")
    assert repair.returncode == 0, repair.stderr
    assert sorted((a["target"], a["action"]) for a in json.loads(repair.stdout)["actions"]) == [
        ("vdb", "quarantined"), ("vdc", "quarantined")]
    assert not pwned.exists() and victim.read_text() == "root's file"
    assert len(list(vm_dir.glob("*.quarantined-*"))) == 2
    assert run_cli("detach", vm.qmp_path, "--target", "vdd", "--state-dir", state).returncode == 0
    assert monitor.snapshot() == initial
