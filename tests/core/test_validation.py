"""Issue 14 items 9 and 10: every bad path, name, number and timeout is a clean exit 2, never 70 or a hang."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest

from hotluks.errors import HotluksError, InputError, XMLError
from hotluks.model import DetachedHeader, Disk, Source
from hotluks.plan.planner import build_plan

TARGET = "<target dev='vdb' bus='virtio'/>"
SECRET = "<secret type='passphrase' uuid='0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f'/>"
PLAIN = f"<disk type='file'><source file='/var/lib/p.img'/>{TARGET}</disk>"


def iscsi(lun: str) -> str:
    return (f"<disk type='network'><source protocol='iscsi' name='iqn.2024-01.org.example:t/{lun}'>"
            f"<host name='h' port='3260'/></source>{TARGET}</disk>")


def scsi(address: str) -> str:
    return (f"<disk type='file'><source file='/p'/><target dev='sdb' bus='scsi'/>"
            f"<address type='drive' {address}/></disk>")


def detached(header_path: str) -> str:
    return (f"<disk type='file'><source file='/var/lib/p.img'/>{TARGET}<encryption format='luks'>{SECRET}"
            f"<header type='file'><source file='{header_path}'/></header></encryption></disk>")


@pytest.mark.parametrize("lun", ["١٢", "１２", "1²", "16384", "99999999999"])
def test_iscsi_lun_is_ascii_and_in_range(lun: str) -> None:
    with pytest.raises(XMLError, match="LUN"):
        Disk.from_xml(iscsi(lun))


def test_iscsi_lun_limits_accepted() -> None:
    assert build_plan(Disk.from_xml(iscsi("16383"))).steps[0].arguments["lun"] == 16383


@pytest.mark.parametrize("address", ["unit='16384'", "target='256'", "bus='1'", "controller='256'", "unit='١'"])
def test_scsi_address_beyond_qemu(address: str) -> None:
    with pytest.raises(XMLError):
        Disk.from_xml(scsi(address))


def test_scsi_address_at_the_limits() -> None:
    dev = build_plan(Disk.from_xml(scsi("controller='255' target='255' unit='16383'"))).steps[-1].arguments
    assert (dev["bus"], dev["scsi-id"], dev["lun"]) == ("scsi255.0", 255, 16383)


@pytest.mark.parametrize("alias", ["//var/lib/p.img", "/var//lib/p.img", "/var/lib/./p.img", "/var/x/../lib/p.img",
                                   "/var/lib/p.img/."])
def test_header_that_is_the_payload_in_disguise(alias: str, cli: Any, write_xml: Any) -> None:
    with pytest.raises(XMLError, match="same volume"):
        Disk.from_xml(detached(alias))
    path = write_xml(detached(alias))
    for command in ("plan", "cold-cmdline"):
        result = cli(command, str(path))
        assert result.code == 2 and "same volume" in result.err


def test_api_disk_built_in_python_is_checked_too() -> None:
    payload = Source(kind="file", path="/var/lib/p.img")
    header = Source(kind="file", path="/var/lib/../lib//p.img")
    good = Disk.from_xml(detached("/var/lib/h.img"))
    assert good.encryption is not None
    twin = Disk(source=payload, target_dev="vdb", bus="virtio",
                encryption=type(good.encryption)(format=good.encryption.format, engine=good.encryption.engine,
                                                  secrets=good.encryption.secrets, header=DetachedHeader(header)))
    with pytest.raises(InputError, match="same file"):
        build_plan(twin)
    with pytest.raises(InputError, match="internal state"):
        build_plan(Disk(source=Source(kind="file", path="/dev/fdset/0"), target_dev="vdb", bus="virtio"))


@pytest.mark.parametrize("path", ["/dev/fdset/0", "/dev/fdset/1/../0", "//dev/fdset/2", "/dev/fd/3",
                                  "/proc/self/fd/3", "/sys/block/sda", "/x/../dev/fdset/0"])
def test_qemu_internal_paths_refused(path: str) -> None:
    with pytest.raises(XMLError, match="internal state"):
        Disk.from_xml(PLAIN.replace("/var/lib/p.img", path))
    with pytest.raises(XMLError, match="internal state"):
        Disk.from_xml(detached(path))


def test_impossible_paths_in_xml() -> None:
    with pytest.raises(XMLError, match="ENAMETOOLONG"):
        Disk.from_xml(PLAIN.replace("/var/lib/p.img", "/" + "a" * 256))
    with pytest.raises(XMLError, match="schema"):
        Disk.from_xml(PLAIN.replace("/var/lib/p.img", "/a" * 2100))


def test_bad_disk_xml_paths_exit_2(cli: Any, tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    (tmp_path / "file").write_text(PLAIN)
    cases = {str(tmp_path / ("n" * 300)): "too long", str(loop): "symbolic links",
             str(tmp_path / "file" / "x.xml"): "not a directory", "x" * 5000: "too long"}
    for path, reason in cases.items():
        result = cli("plan", path)
        assert result.code == 2 and reason in result.err, result.err


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def _no_hang(cli: Any, *argv: str) -> Any:
    """Run in a thread: a blocked open() would hang the test, so bound it."""
    out: list[Any] = []
    worker = threading.Thread(target=lambda: out.append(cli(*argv)), daemon=True)
    worker.start()
    worker.join(10)
    assert out, f"hotluks {' '.join(argv)} blocked"
    return out[0]


def test_fifos_are_refused_without_blocking(cli: Any, tmp_path: Path, write_xml: Any) -> None:
    fifo = _fifo(tmp_path, "fifo")
    xml = write_xml(detached("/var/lib/h.img"))
    disk = _no_hang(cli, "plan", str(fifo))
    assert disk.code == 2 and "not a regular file" in disk.err
    secret = _no_hang(cli, "cold-cmdline", str(xml), "--inline-secrets",
                      "--secret", f"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f={fifo}")
    assert secret.code == 2 and "not a regular file" in secret.err
    master = _no_hang(cli, "attach", "unix:/nonexistent.sock", str(xml), "--master-key", str(fifo))
    assert master.code == 2 and "not a regular file" in master.err
    attach_secret = _no_hang(cli, "attach", "unix:/nonexistent.sock", str(xml),
                             "--secret", f"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f={fifo}")
    assert attach_secret.code == 2 and "not a regular file" in attach_secret.err


@pytest.mark.parametrize("value", ["nan", "-5", "0", "inf", "1e12"])
def test_bad_timeouts(value: str, cli: Any, write_xml: Any) -> None:
    for argv in (("attach", "dom", str(write_xml(PLAIN)), "--timeout", value),
                 ("detach", "dom", "--target", "vdb", "--timeout", value)):
        result = cli(*argv)
        assert result.code == 2 and "--timeout" in result.err, result.err


def test_vm_names(cli: Any) -> None:
    long_name = cli("status", "v" * 5000)
    assert long_name.code == 2 and "at most 255" in long_name.err
    long_socket = cli("status", "unix:/" + "s" * 200)
    assert long_socket.code == 2 and "UNIX socket" in long_socket.err
    control = cli("status", "vm\x1b[31m")
    assert control.code == 2 and "\x1b" not in control.err


@pytest.mark.parametrize("value", [42, None, ["<disk/>"], "\ud800<disk/>"])
def test_from_xml_raises_only_hotluks_errors(value: Any) -> None:
    with pytest.raises(HotluksError):
        Disk.from_xml(value)


def test_bad_secret_and_master_key_paths_exit_2(cli: Any, tmp_path: Path, write_xml: Any) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    xml = str(write_xml(detached("/var/lib/h.img")))
    for bad in (str(loop), str(tmp_path / ("k" * 300)), f"{xml}/x"):
        secret = cli("cold-cmdline", xml, "--inline-secrets", "--secret", f"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f={bad}")
        assert secret.code == 2 and "cannot read secret file" in secret.err, secret.err
        master = cli("attach", "unix:/nonexistent.sock", xml, "--master-key", bad)
        assert master.code == 2 and "--master-key file" in master.err, master.err
