"""File access on QEMU's behalf: only what QEMU's own user could open is handed to it."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.errors import RefusedError
from hotluks.plan.steps import FdSource
from hotluks.runner.access import Credentials, check_qemu_access, pid_of_instance, process_credentials, refusal

QEMU = Credentials(uid=64055, gids=frozenset({107, 64055}))


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory QEMU's user may search (the test's own tmp tree is root-only)."""
    work = Path("/var/tmp") / f"hotluks-access-{os.getpid()}"
    work.mkdir(mode=0o711, exist_ok=True)
    work.chmod(0o711)
    yield work
    for child in work.iterdir():
        child.unlink()
    work.rmdir()


def _file(where: Path, name: str, mode: int, uid: int = 0, gid: int = 0) -> Path:
    path = where / name
    path.write_bytes(b"x")
    os.chown(path, uid, gid)
    path.chmod(mode)
    return path


def test_root_only_file_is_refused_with_the_reason(open_dir: Path) -> None:
    path = _file(open_dir, "root-only", 0o600)
    reason = refusal(FdSource(str(path)), QEMU)
    assert reason is not None and str(path) in reason and "0600" in reason and "read and write" in reason


def test_owner_group_and_other_bits(open_dir: Path) -> None:
    assert refusal(FdSource(str(_file(open_dir, "mine", 0o600, uid=64055))), QEMU) is None
    assert refusal(FdSource(str(_file(open_dir, "group", 0o660, gid=107))), QEMU) is None
    group_ro = _file(open_dir, "group-ro", 0o640, gid=107)
    assert refusal(FdSource(str(group_ro), read_only=True), QEMU) is None
    assert refusal(FdSource(str(group_ro)), QEMU) is not None  # writable node, read-only for the group
    assert refusal(FdSource(str(_file(open_dir, "world", 0o606))), QEMU) is None


def test_an_unsearchable_directory_on_the_way_is_refused(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    path = _file(private, "file", 0o666)
    reason = refusal(FdSource(str(path)), QEMU)
    assert reason is not None and "not searchable" in reason


def test_root_qemu_and_unknown_processes() -> None:
    assert refusal(FdSource("/etc/shadow"), Credentials(0, frozenset({0}))) is None
    assert pid_of_instance("1234-998877") == 1234 and pid_of_instance("domid7") is None
    check_qemu_access([FdSource("/etc/shadow")], "domid7")  # a QEMU not on this host: nothing to judge
    assert process_credentials(os.getpid()) is not None


def test_check_refuses_with_exit_2(open_dir: Path) -> None:
    """Judged against a real process of another user (``sleep`` as nobody), found by its pid."""
    path = _file(open_dir, "secret", 0o600)
    sleeper = subprocess.Popen(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "sleep", "30"])
    try:
        for _ in range(100):  # until setpriv has become nobody and exec'd sleep
            who = process_credentials(sleeper.pid)
            if who is not None and who.uid != 0:
                break
            time.sleep(0.02)
        with pytest.raises(RefusedError) as info:
            check_qemu_access([FdSource(str(path))], f"{sleeper.pid}-0")
        assert info.value.exit_code == 2 and "nothing was sent" in str(info.value) and str(path) in str(info.value)
        check_qemu_access([FdSource(str(_file(open_dir, "shared", 0o644)), read_only=True)], f"{sleeper.pid}-0")
    finally:
        sleeper.kill()
        sleeper.wait()


def test_no_files_to_pass_means_no_process_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan without descriptor steps (plain QMP) has nothing to judge: /proc is not read."""
    import hotluks.runner.access as access

    def unexpected(pid: int) -> Credentials | None:
        raise AssertionError("process credentials read for a plan that passes no files")

    monkeypatch.setattr(access, "process_credentials", unexpected)
    check_qemu_access([], f"{os.getpid()}-1")
    check_qemu_access(iter(()), f"{os.getpid()}-1")
