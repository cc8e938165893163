"""Unit tests for the test cluster's pure parts: ceph.conf rendering, ports, qemu-io dumps."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from testsupport.ceph import CephClusterError, CephPorts, parse_hexdump, ports_in_use, render_conf


def conf_dict(text: str) -> dict[str, dict[str, str]]:
    sections: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
            sections.setdefault(current, {})
        elif "=" in line:
            key, _, value = line.partition("=")
            sections[current][key.strip()] = value.strip()
    return sections


def test_auth_none_conf_is_loopback_memstore() -> None:
    conf = conf_dict(render_conf("f-s-i-d", CephPorts(13300), Path("/x"), cephx=False, memstore_mb=64))
    g = conf["global"]
    assert g["mon host"] == "[v2:127.0.0.1:13300,v1:127.0.0.1:13301]"
    assert g["public addr"] == g["cluster addr"] == "127.0.0.1"
    assert (g["ms bind port min"], g["ms bind port max"]) == ("13310", "13329")
    assert g["osd objectstore"] == "memstore" and g["memstore device bytes"] == str(64 << 20)
    assert {g[f"auth {k} required"] for k in ("cluster", "service", "client")} == {"none"}
    assert g["keyring"] == "/dev/null"
    assert conf["client"]["admin socket"] == ""
    assert conf["mon.a"]["public addrv"] == g["mon host"]


def test_cephx_conf_gives_keys_only_to_daemons_and_admin() -> None:
    conf = conf_dict(render_conf("f", CephPorts(13400), Path("/x"), cephx=True, memstore_mb=64))
    assert {conf["global"][f"auth {k} required"] for k in ("cluster", "service", "client")} == {"cephx"}
    assert conf["global"]["keyring"] == "/x/nokeyring"
    for section in ("mon.a", "osd.0", "client.admin"):
        assert conf[section]["keyring"] == "/x/keyring"
    assert "client.hotluks" not in conf


def test_ports_in_use_sees_a_listener() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert ports_in_use(CephPorts(port)) == [port]  # the msgr2 port
        assert ports_in_use(CephPorts(port - 1)) == [port]  # the msgr1 port of the block below


DUMP = """00000010:  00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f  ................
00000020:  41 42 20  AB 
read 19/19 bytes at offset 16
"""


def test_parse_hexdump() -> None:
    assert parse_hexdump(DUMP, 16, 19) == bytes(range(16)) + b"AB "
    with pytest.raises(CephClusterError):
        parse_hexdump(DUMP, 16, 20)
    with pytest.raises(CephClusterError):
        parse_hexdump(DUMP, 0, 19)
