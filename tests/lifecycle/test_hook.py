"""The libvirt hook's checks on the hotluks disks of a definition, and its install/uninstall."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.cli.main import main as cli_main
from hotluks.lifecycle.hook import NeededFile, access_problem, needed_files, refusal
from hotluks.lifecycle.hook_main import main as hook_main
from hotluks.lifecycle.libvirt_cmdline import commandline_argv, commandline_xml
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.secrets import SecretValue

NOBODY = pwd.getpwnam("nobody")


def disk_xml(payload: Path, header: Path) -> str:
    return (f"<disk type='file'><driver name='qemu' type='raw'/><source file='{payload}'/>"
            f"<encryption format='luks'><secret type='passphrase' usage='u1'/>"
            f"<header type='file'><source file='{header}'/></header></encryption>"
            "<target dev='vdb' bus='virtio'/>"
            "<address type='pci' domain='0' bus='0' slot='0x1f' function='0'/></disk>")


def domain_with(payload: Path, header: Path, key: Path) -> str:
    plan = build_plan(Disk.from_xml(disk_xml(payload, header)))
    block = commandline_xml(commandline_argv(plan, {"u1": SecretValue(b"pw")}, os.urandom(32), str(key)))
    return f"<domain type='qemu'><name>d</name><devices/>{block}</domain>"


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory everyone may enter (pytest's tmp_path is 0700 under a 0700 parent)."""
    path = Path(tempfile.mkdtemp(prefix="hotluks-hooktest-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def files(base: Path) -> dict[str, Path]:
    out = {name: base / name for name in ("payload", "header", "key")}
    for path in out.values():
        path.write_bytes(b"x")
        os.chown(path, NOBODY.pw_uid, NOBODY.pw_gid)
        path.chmod(0o600)
    return out


def test_needed_files_are_the_key_payload_and_header(files: dict[str, Path]) -> None:
    needs = needed_files(domain_with(files["payload"], files["header"], files["key"]))
    assert needs == [NeededFile("hotluks-key0", str(files["key"]), False),
                     NeededFile("hl-vdb-hdr-proto", str(files["header"]), True),
                     NeededFile("hl-vdb-proto", str(files["payload"]), True)]


def test_files_the_qemu_user_owns_pass_and_others_are_named(files: dict[str, Path]) -> None:
    xml = domain_with(files["payload"], files["header"], files["key"])
    gids = [NOBODY.pw_gid]
    assert refusal("d", "restore", xml, NOBODY.pw_uid, gids) is None
    os.chown(files["header"], 0, 0)
    message = refusal("d", "restore", xml, NOBODY.pw_uid, gids)
    assert message is not None and "hl-vdb-hdr-proto" in message and str(files["header"]) in message
    assert "restore of domain d" in message
    assert refusal("d", "started", xml, NOBODY.pw_uid, gids) is None  # only prepare/migrate/restore are checked
    files["payload"].unlink()
    assert "No such file" in str(refusal("d", "prepare", xml, NOBODY.pw_uid, gids))


def test_a_closed_directory_on_the_way_and_dev_paths(files: dict[str, Path], base: Path) -> None:
    base.chmod(0o700)
    problem = access_problem(NeededFile("hl-vdb-proto", str(files["payload"]), True), NOBODY.pw_uid, [])
    assert problem is not None and "cannot enter" in problem
    assert "private /dev" in str(access_problem(NeededFile("hl-x", "/dev/sda", True), NOBODY.pw_uid, []))


def test_hook_main_refuses_with_exit_1(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    xml = domain_with(files["payload"], files["header"], files["key"])
    os.chown(files["key"], 0, 0)
    monkeypatch.setenv("HOTLUKS_QEMU_USER", "nobody")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(xml.encode())))
    assert hook_main(["d", "migrate", "begin", "-"]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "incoming migration of domain d" in err and "hotluks-key0" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"<domain><name>d</name></domain>")))
    assert hook_main(["d", "restore", "begin", "-"]) == 0


def test_install_and_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hooks = tmp_path / "hooks"
    assert cli_main(["hook", "install", "--hooks-dir", str(hooks)]) == 0
    script = hooks / "qemu.d" / "50-hotluks"
    assert script.stat().st_mode & 0o777 == 0o755
    run: Any = subprocess.run([str(script), "d", "start", "begin", "-"], input=b"<domain/>", capture_output=True)
    assert run.returncode == 0 and run.stdout == b""
    assert cli_main(["hook", "uninstall", "--hooks-dir", str(hooks)]) == 0
    assert not script.exists()
    script.write_text("#!/bin/sh\nexit 0\n")  # someone else's hook under that name stays
    assert cli_main(["hook", "uninstall", "--hooks-dir", str(hooks)]) == 2
    assert script.exists()


def test_cold_cmdline_libvirt_needs_a_fixed_place(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    xml = tmp_path / "d.xml"
    xml.write_text(disk_xml(tmp_path / "p", tmp_path / "h").replace(
        "<address type='pci' domain='0' bus='0' slot='0x1f' function='0'/>", ""))
    secret = tmp_path / "pass"
    secret.write_bytes(b"pw-never-shown")
    common = ["cold-cmdline", str(xml), "--format", "libvirt", "--secret", f"u1={secret}",
              "--key-file", str(tmp_path / "k"), "--qemu-user", "nobody"]
    assert cli_main(common) == 2
    assert "explicit" in capsys.readouterr().err
    assert cli_main([*common, "--pci-bus", "pci.4"]) == 0
    out = capsys.readouterr().out
    assert "pci.4" in out and "pw-never-shown" not in out and "hotluks-key0" in out
    assert (tmp_path / "k").stat().st_uid == NOBODY.pw_uid and (tmp_path / "k").stat().st_mode & 0o777 == 0o400
