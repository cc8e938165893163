"""LibvirtBackend pure helpers and failure paths that a real daemon cannot be made to produce."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from pytest_mock import MockerFixture

from hotluks.backends.base import QMPCommandError
from hotluks.backends.libvirt import LibvirtBackend, command_json, decode_master_key, event_from_libvirt, parse_reply
from hotluks.errors import BackendError


def test_command_json() -> None:
    assert command_json("query-status", None) == '{"execute": "query-status"}'
    assert command_json("x", {"a": 1}) == '{"execute": "x", "arguments": {"a": 1}}'


def test_parse_reply() -> None:
    assert parse_reply("x", '{"return": [1], "id": "libvirt-3"}') == [1]
    with pytest.raises(QMPCommandError) as info:
        parse_reply("blockdev-del", '{"error": {"class": "GenericError", "desc": "no node"}}')
    assert (info.value.command, info.value.error_class, info.value.desc) == ("blockdev-del", "GenericError", "no node")


@pytest.mark.parametrize("garbage", ["", "nope", "[1]", '{"id": "x"}', "null"])
def test_parse_reply_garbage(garbage: str) -> None:
    with pytest.raises(BackendError):
        parse_reply("x", garbage)


def test_event_from_libvirt() -> None:
    ev = event_from_libvirt("DEVICE_DELETED", 5, 7, '{"device": "d"}')
    assert ev == {"event": "DEVICE_DELETED", "data": {"device": "d"}, "timestamp": {"seconds": 5, "microseconds": 7}}
    assert event_from_libvirt("STOP", 1, 2, None)["data"] == {}
    assert event_from_libvirt("X", 1, 2, "{bad")["data"] == {}


def test_decode_master_key() -> None:
    key = bytes(range(32))
    assert decode_master_key(key, "raw") == key
    assert decode_master_key(base64.b64encode(key), "base64") == key
    with pytest.raises(BackendError, match="16 bytes"):
        decode_master_key(key[:16], "raw")


def test_execute_before_connect() -> None:
    with pytest.raises(BackendError, match="not connected"):
        asyncio.run(LibvirtBackend("vm").execute("query-status"))


def test_libvirt_failure_is_backend_error_without_the_command(mocker: MockerFixture) -> None:
    import libvirt
    import libvirt_qemu

    def fail(*_: Any) -> str:
        raise libvirt.libvirtError("Requested operation is not valid: domain is not running")

    mocker.patch.object(libvirt_qemu, "qemuMonitorCommand", side_effect=fail)
    backend = LibvirtBackend("vm")
    backend._dom = object()
    with pytest.raises(BackendError) as info:
        asyncio.run(backend.execute("object-add", {"qom-type": "secret", "id": "s", "data": "c2VjcmV0"}))
    assert "domain is not running" in str(info.value) and "c2VjcmV0" not in str(info.value)
    assert not isinstance(info.value, QMPCommandError)


def test_unreachable_daemon_is_backend_error() -> None:
    backend = LibvirtBackend("vm", "qemu+unix:///system?socket=/nonexistent/libvirt-sock", timeout=5)
    with pytest.raises(BackendError, match="cannot connect to libvirt"):
        asyncio.run(backend.connect())
