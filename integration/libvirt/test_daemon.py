"""The libvirtd fixture starts a real daemon, reuses one that runs, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hotluks.testing.libvirtd import RUN_DIR, LibvirtDaemon, daemon_answers, start_domain, start_libvirtd

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_start_and_stop_leave_no_process() -> None:
    if daemon_answers():
        pytest.skip("a libvirt daemon already runs (reuse is tested below); cannot test a cold start")
    run_dir_existed = RUN_DIR.exists()
    daemon = start_libvirtd()
    try:
        assert daemon.started
        pids = daemon.pids
        assert len(pids) == 2 and all(_running(p) for p in pids)  # virtlogd + libvirtd
        assert daemon_answers(daemon.uri)
        assert "libvirtd" in Path(f"/proc/{pids[-1]}/cmdline").read_bytes().decode()
        workdir = daemon.workdir
    finally:
        daemon.stop()
    assert not any(_running(p) for p in pids)
    assert not daemon_answers()
    assert workdir is not None and not workdir.exists()
    assert RUN_DIR.exists() == run_dir_existed


def test_daemons_die_with_the_process_that_started_them(tmp_path: Path) -> None:
    if daemon_answers():
        pytest.skip("a libvirt daemon already runs; cannot test a cold start")
    script = textwrap.dedent("""
        import sys, time
        from hotluks.testing.libvirtd import start_libvirtd
        d = start_libvirtd()
        print(" ".join(map(str, d.pids)), flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        pids = [int(p) for p in child.stdout.readline().split()]
        assert pids and all(_running(p) for p in pids)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    deadline = time.monotonic() + 20
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    leftover = [p for p in pids if _running(p)]
    for pid in leftover:  # clean up before failing
        os.kill(pid, signal.SIGKILL)
    assert not leftover
    if not any(RUN_DIR.glob("*-sock")):
        import shutil
        shutil.rmtree(RUN_DIR, ignore_errors=True)


def test_running_daemon_is_reused_and_not_stopped(libvirt_daemon: LibvirtDaemon) -> None:
    again = start_libvirtd(libvirt_daemon.uri)
    assert not again.started and again.pids == []
    again.stop()
    assert daemon_answers(libvirt_daemon.uri)
    assert libvirt_daemon.alive()


def test_transient_domain_has_acpi_and_is_removed(libvirt_uri: str) -> None:
    import libvirt

    dom = start_domain(libvirt_uri, paused=True)
    try:
        conn = libvirt.open(libvirt_uri)
        try:
            live = conn.lookupByName(dom.name)
            assert live.isActive()
            assert live.state()[0] == libvirt.VIR_DOMAIN_PAUSED
            assert "<acpi/>" in live.XMLDesc(0)
            pid = dom.qemu_pid()
            assert pid is not None
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"acpi=on" in b" ".join(argv)
        finally:
            conn.close()
    finally:
        dom.destroy()
    assert not _running(pid)
    conn = libvirt.open(libvirt_uri)
    try:
        assert dom.name not in [d.name() for d in conn.listAllDomains(0)]
    finally:
        conn.close()
