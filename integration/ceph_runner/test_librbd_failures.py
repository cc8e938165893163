"""librbd failures through hotluks: each ends with exit 1 (rolled back, QEMU's message in the
error) or exit 2 (refused), and the VM is exactly as before.

On this host QEMU 10.0.2 is linked against librbd 16: its QMP schema has ``luks-any`` and
``parent`` (so the capability probe passes), but librbd 16 cannot do either; hotluks rolls
back and names the requirement.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.vms import Monitor, journal_files, leaks, run_cli

if TYPE_CHECKING:
    from conftest import Ceph

pytestmark = [pytest.mark.ceph, pytest.mark.qemu, pytest.mark.slow]


def attach(vm: QemuProcess, xml: str, workdir: Path, state_dir: Path, secrets: list[str], *extra: str,
           timeout: float = 120) -> tuple[int, dict[str, object], str]:
    """``hotluks attach --json``: (exit code, JSON reply, stdout+stderr)."""
    path = workdir / "disk.xml"
    path.write_text(xml)
    proc = run_cli("attach", f"unix:{vm.qmp_path}", path, *secrets, "--state-dir", state_dir, "--json", *extra,
                   timeout=timeout)
    return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr


def test_luks_any_on_librbd16_rolls_back_naming_the_requirement(ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                                                                 assert_unchanged: Callable[[], None],
                                                                 workdir: Path, state_dir: Path) -> None:
    xml = ceph.librbd_xml(ceph.librbd_image("luks2"), "luks-any")
    code, reply, out = attach(vm, xml, workdir, state_dir, ceph.secret_args(workdir))
    assert code == 1 and reply["error"]["type"] == "RolledBack", out
    error = str(reply["error"]["message"])
    assert "unknown image encryption format: 2: Operation not supported" in error
    assert "'luks-any' needs QEMU built against librbd ≥ 18 (Ceph Reef" in error and "the VM is as before" in error
    assert_unchanged()


def test_layered_encryption_on_librbd16_rolls_back_naming_the_requirement(
        ceph: Ceph, vm: QemuProcess, monitor: Monitor, assert_unchanged: Callable[[], None], workdir: Path,
        state_dir: Path) -> None:
    parent_pass = workdir / "parent.pass"
    parent_pass.write_bytes(b"parent-layer-passphrase")
    xml = ceph.librbd_xml(ceph.librbd_image("luks2"), "luks2", layers=2)
    secrets = ceph.secret_args(workdir) + ["--secret", f"hotluks-ceph-runner-pass-1={parent_pass}"]
    code, reply, out = attach(vm, xml, workdir, state_dir, secrets)
    assert code == 1 and reply["error"]["type"] == "RolledBack", out
    error = str(reply["error"]["message"])
    assert "RBD library does not support layered encryption" in error
    assert "layered encryption (a 'parent' per clone layer) needs QEMU built against librbd ≥ 18" in error
    assert "rolled back: object-del" in error  # both secret objects were added, then removed
    assert_unchanged()


@pytest.mark.parametrize("case", ["wrong-passphrase", "luks1-as-luks2", "unknown-image"])
def test_qemu_errors_roll_back(case: str, ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                               assert_unchanged: Callable[[], None], workdir: Path, state_dir: Path,
                               passphrase: bytes) -> None:
    """librbd keeps its header to itself: preflight cannot check it, QEMU's error → exit 1."""
    passfile = None
    if case == "wrong-passphrase":
        passfile = workdir / "wrong"
        passfile.write_bytes(b"not-the-passphrase")
        xml, expected = ceph.librbd_xml(ceph.librbd_image("luks2"), "luks2"), \
            "encryption load fail: Operation not permitted"
    elif case == "luks1-as-luks2":
        xml, expected = ceph.librbd_xml(ceph.librbd_image("luks1"), "luks2"), \
            "encryption load fail: Invalid argument"
    else:
        xml, expected = ceph.librbd_xml("no-such-image", "luks2"), "No such file or directory"
    code, reply, out = attach(vm, xml, workdir, state_dir, ceph.secret_args(workdir, passfile))
    assert code == 1 and reply["error"]["type"] == "RolledBack", out
    assert expected in str(reply["error"]["message"]) and "(blockdev-add " in str(reply["error"]["message"])
    assert not leaks(passphrase, [out])
    assert_unchanged()


def test_cluster_down_fails_within_the_timeout(ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                                               assert_unchanged: Callable[[], None], workdir: Path,
                                               state_dir: Path) -> None:
    """The conf names a mon nobody listens on: librados gives up after ``client mount timeout``
    (5 s here), QEMU reports it, hotluks rolls back well within ``--timeout``."""
    conf = ceph.client_conf(workdir / "dead.conf", dead=True, mount_timeout=5)
    xml = ceph.librbd_xml(ceph.librbd_image("luks2"), "luks2", conf=conf)
    started = time.monotonic()
    code, reply, out = attach(vm, xml, workdir, state_dir, ceph.secret_args(workdir), "--timeout", "20")
    took = time.monotonic() - started
    assert code == 1 and reply["error"]["type"] == "RolledBack", out
    assert "error connecting" in str(reply["error"]["message"])
    assert 4 < took < 20, took
    assert_unchanged()


def test_timeout_shorter_than_librados_is_never_a_silent_half_plug(ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                                                                   initial: object, workdir: Path,
                                                                   state_dir: Path) -> None:
    """``--timeout 3`` while librados waits 20 s for a dead mon: QEMU's monitor is blocked inside
    blockdev-add, so hotluks cannot roll back in time. It stops after two timeouts (the step, the
    undo's query) with exit 3 (journal: needs-repair) instead of hanging; once QEMU answers,
    ``repair`` restores the VM."""
    conf = ceph.client_conf(workdir / "dead.conf", dead=True, mount_timeout=20)
    xml = ceph.librbd_xml(ceph.librbd_image("luks2"), "luks2", conf=conf)
    started = time.monotonic()
    code, reply, out = attach(vm, xml, workdir, state_dir, ceph.secret_args(workdir), "--timeout", "3")
    took = time.monotonic() - started
    assert code == 3 and reply["error"]["type"] == "Incomplete", out
    assert "no answer from QEMU within 3s" in str(reply["error"]["message"]) and "hotluks repair" in str(reply["error"]["message"])
    assert took < 10, took  # two 3 s waits (the step, the undo query), never librados' 20 s
    assert [p.name for p in journal_files(state_dir)] == ["vdb.json"]  # the journal keeps the record
    monitor.cmd("query-status")  # blocks until librados gave up and QEMU's main loop runs again
    assert time.monotonic() - started > 15
    repair = run_cli("repair", f"unix:{vm.qmp_path}", "--state-dir", state_dir, "--timeout", "30", "--json",
                     timeout=60)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    actions = json.loads(repair.stdout)["actions"]
    assert [(a["target"], a["action"]) for a in actions] == [("vdb", "rolled back interrupted attach")], actions
    assert monitor.snapshot() == initial
    assert journal_files(state_dir) == []
