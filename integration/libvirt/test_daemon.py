"""The libvirtd fixture starts a real daemon, reuses one that runs, and leaves nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from testsupport.libvirtd import RUN_DIR, STATE_DIR, LibvirtDaemon, daemon_answers, start_domain, start_libvirtd

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _stop_expecting_users(daemon: LibvirtDaemon, expected: int) -> None:
    """Stop ``daemon``; skip the test if another test process joined it meanwhile (shared host)."""
    with daemon.registry.locked():
        users = len(daemon.registry.live_users())
    daemon.stop()
    if users > expected:
        pytest.skip("another test process joined the daemon during this cold-start test")


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
        _stop_expecting_users(daemon, 1)
    assert not any(_running(p) for p in pids)
    assert not daemon_answers()
    assert workdir is not None and not workdir.exists()
    assert RUN_DIR.exists() == run_dir_existed
    assert not (STATE_DIR / "daemon.json").exists() and not any((STATE_DIR / "users").iterdir())


def _child_daemon(action: str) -> tuple[subprocess.Popen[str], list[int]]:
    """A second test process that starts (or joins) the daemon, prints its PIDs, then waits for a line."""
    script = textwrap.dedent(f"""
        import sys
        from testsupport.libvirtd import start_libvirtd
        d = start_libvirtd()
        print(" ".join(map(str, d.pids)), flush=True)
        sys.stdin.readline()
        {action}
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    return child, [int(p) for p in child.stdout.readline().split()]


def test_processes_share_one_daemon_and_the_last_one_stops_it() -> None:
    if daemon_answers():
        pytest.skip("a libvirt daemon already runs; cannot test a cold start")
    child, pids = _child_daemon("d.stop()")
    try:
        assert len(pids) == 2 and all(_running(p) for p in pids)
        mine = start_libvirtd()
        try:
            assert mine.started and sorted(mine.pids) == sorted(pids)  # joined, not a second daemon
            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.flush()
            assert child.wait(30) == 0
            assert all(_running(p) for p in pids) and daemon_answers()  # still ours to use
        finally:
            _stop_expecting_users(mine, 1)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not any(_running(p) for p in pids)
    assert not (STATE_DIR / "daemon.json").exists()


def test_daemon_of_a_killed_run_is_adopted_and_stopped() -> None:
    if daemon_answers():
        pytest.skip("a libvirt daemon already runs; cannot test a cold start")
    child, pids = _child_daemon("")
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    try:
        assert all(_running(p) for p in pids)
        again = start_libvirtd()
        assert again.started and sorted(again.pids) == sorted(pids)
        _stop_expecting_users(again, 1)
        assert not any(_running(p) for p in pids)
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_running_daemon_is_joined_and_not_stopped_by_a_second_user(libvirt_daemon: LibvirtDaemon) -> None:
    again = start_libvirtd(libvirt_daemon.uri)
    try:
        assert again.started == libvirt_daemon.started and again.pids == libvirt_daemon.pids
    finally:
        again.stop()
    assert daemon_answers(libvirt_daemon.uri)
    assert libvirt_daemon.alive()


def test_a_daemon_hotluks_did_not_start_is_never_stopped(libvirt_daemon: LibvirtDaemon, tmp_path: Path) -> None:
    """Without hotluks' registry record the running daemon counts as someone else's."""
    from testsupport import libvirtd as mod

    registry = mod._Registry(tmp_path / "registry")  # an empty registry: this daemon is "a human's"
    original = mod._Registry
    mod._Registry = lambda: registry  # type: ignore[assignment,misc]
    try:
        foreign = start_libvirtd(libvirt_daemon.uri)
    finally:
        mod._Registry = original  # type: ignore[misc]
    assert not foreign.started and foreign.pids == []
    foreign.stop()
    assert daemon_answers(libvirt_daemon.uri) and libvirt_daemon.alive()


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
