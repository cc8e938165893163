"""Unit tests for hotluks.rbd_read's pure parts and its error edges (no cluster)."""

from __future__ import annotations

import pytest

from hotluks import rbd_read
from hotluks.model import Auth, Host, SecretRef, Source
from hotluks.rbd_read import RbdLocation, RbdReadError, export_command, location_of, mon_host, read_image_head


def rbd_source(name: str, **kw: object) -> Source:
    return Source(kind="network", protocol="rbd", name=name, **kw)  # type: ignore[arg-type]


def test_location_of_rbd_source_with_hosts_and_auth() -> None:
    src = rbd_source("pool/ns/img@snap", hosts=(Host("10.0.0.1", 6789), Host("fd00::1", 3300), Host("mon3")),
                     auth=Auth("hotluks", SecretRef("ceph", usage="client.hotluks")), config_file="/etc/c.conf")
    loc = location_of(src)
    assert loc == RbdLocation(pool="pool", image="img", namespace="ns", snapshot="snap", conf="/etc/c.conf",
                              mon_hosts=("10.0.0.1:6789", "[fd00::1]:3300", "mon3"), user="hotluks")
    assert loc.spec == "pool/ns/img@snap"


def test_mon_host_brackets_ipv6_only() -> None:
    assert mon_host("127.0.0.1", 13300) == "127.0.0.1:13300"
    assert mon_host("::1", None) == "[::1]"
    assert mon_host("[::1]", 1) == "[::1]:1"


def test_export_command_never_holds_the_key() -> None:
    loc = RbdLocation(pool="rbd", image="hdr", mon_hosts=("127.0.0.1:13400",), user="hotluks")
    argv = export_command(loc, keyfile="/tmp/x/key")
    assert argv[:3] == ["rbd", "-c", "/dev/null"]  # explicit hosts: no ambient ceph.conf
    assert ["-m", "127.0.0.1:13400"] == argv[3:5] and ["--id", "hotluks"] == argv[5:7]
    assert ["--keyfile", "/tmp/x/key"] == argv[7:9]
    assert argv[-3:] == ["--no-progress", "rbd/hdr", "-"]
    assert argv[argv.index("--client_mount_timeout") + 1] == "15"
    short = export_command(loc, mount_timeout=4)
    assert short[short.index("--client_mount_timeout") + 1] == "4"
    conf_only = export_command(RbdLocation(pool="p", image="i", conf="/c"))
    assert conf_only[:3] == ["rbd", "-c", "/c"] and "-m" not in conf_only and "--keyfile" not in conf_only


def test_missing_rbd_tool_is_a_preflight_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rbd_read, "RBD_BINARY", "/nonexistent/rbd")
    with pytest.raises(RbdReadError) as info:
        read_image_head(RbdLocation(pool="p", image="i"), 512, key=b"AQBsecretkey==")
    assert "ceph-common" in str(info.value) and info.value.exit_code == 2
    assert "AQBsecretkey" not in str(info.value)


def test_failure_message_takes_rbd_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """A tool that fails before writing anything: its own error line is reported."""
    monkeypatch.setattr(rbd_read, "RBD_BINARY", "sh")
    monkeypatch.setattr(rbd_read, "export_command",
                        lambda loc, keyfile=None, **_: ["sh", "-c", "echo noise >&2; echo 'rbd: boom' >&2; exit 3"])
    with pytest.raises(RbdReadError) as info:
        read_image_head(RbdLocation(pool="p", image="i"), 512)
    assert str(info.value) == "cannot read rbd p/i: rbd: boom"


def test_stops_reading_after_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endless stream is cut after ``length`` bytes and its process ended."""
    monkeypatch.setattr(rbd_read, "export_command", lambda loc, keyfile=None, **_: ["cat", "/dev/zero"])
    assert read_image_head(RbdLocation(pool="p", image="i"), 3 * 1024 * 1024 + 7, timeout=10) == bytes(
        3 * 1024 * 1024 + 7)


def test_keyfile_is_private_and_removed(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake(loc: RbdLocation, keyfile: str | None = None, mount_timeout: int = 15) -> list[str]:
        import os
        import stat

        assert keyfile is not None
        seen["mode"] = stat.S_IMODE(os.stat(keyfile).st_mode)
        seen["path"] = keyfile
        return ["cat", keyfile]

    monkeypatch.setattr(rbd_read, "export_command", fake)
    assert read_image_head(RbdLocation(pool="p", image="i"), 100, key=b"KEY") == b"KEY"
    import os

    assert seen["mode"] == 0o600 and not os.path.exists(str(seen["path"]))
