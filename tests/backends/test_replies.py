"""Monitor replies of the wrong shape are a typed MalformedReply (a BackendError, exit 2), never a TypeError."""

from __future__ import annotations

from typing import Any

import pytest

from hotluks.backends.libvirt_shared import parse_reply
from hotluks.backends.replies import checked, expect
from hotluks.errors import BackendError, MalformedReply

GOOD: dict[str, Any] = {
    "query-named-block-nodes": [{"node-name": "n", "drv": "raw", "image": {"virtual-size": 5}, "new-field": 1}],
    "qom-list": [{"name": "rp1", "type": "child<pcie-root-port>"}],
    "query-pci": [{"bus": 0, "devices": [{"slot": 1, "qdev_id": "rp1", "pci_bridge": {"devices": [{"slot": 0}]}}]}],
    "query-fdsets": [{"fdset-id": 3, "fds": [{"fd": 40, "opaque": "hotluks:x"}]}],
    "query-version": {"qemu": {"major": 10, "minor": 0, "micro": 2}, "package": "Debian"},
    "query-qmp-schema": [{"name": "blockdev-add", "meta-type": "command"}],
    "query-uuid": {"UUID": "00000000-0000-0000-0000-000000000000"},
    "query-cpus-fast": [],
    "add-fd": {"fdset-id": 1, "fd": 30},
    "blockdev-add": {},
    "qom-get": 5,  # checked where it is read: its type depends on the property
    "some-new-command": [1, "x"],
}

BAD: list[tuple[str, Any]] = [
    ("query-named-block-nodes", 5), ("query-named-block-nodes", [[1]]), ("query-named-block-nodes", [{}]),
    ("query-named-block-nodes", [{"node-name": 7}]), ("query-named-block-nodes", [{"node-name": "n", "image": [1]}]),
    ("query-named-block-nodes", [{"node-name": "n", "image": {"virtual-size": "big"}}]),
    ("query-named-block-nodes", [{"node-name": "n", "image": {"virtual-size": -1}}]),
    ("qom-list", "x"), ("qom-list", ["child<x>"]), ("qom-list", [{"name": "a"}]), ("qom-list", [{"name": "a", "type": 3}]),
    ("query-pci", {"bus": 0}), ("query-pci", [{"bus": 0, "devices": {"slot": 1}}]),
    ("query-pci", [{"bus": 0, "devices": [{"slot": "one"}]}]), ("query-pci", [{"bus": True, "devices": []}]),
    ("query-pci", [{"bus": 0, "devices": [{"slot": 1, "pci_bridge": [1]}]}]),
    ("query-fdsets", [{"fdset-id": -1}]), ("query-fdsets", [{"fdset-id": "2"}]),
    ("query-fdsets", [{"fdset-id": 2, "fds": {}}]), ("query-fdsets", [{"fdset-id": 2, "fds": [{"fd": "x"}]}]),
    ("query-version", None), ("query-version", {"qemu": {"major": "10", "minor": 0, "micro": 0}}),
    ("query-version", {"qemu": {"major": 10, "minor": 0, "micro": 0}, "package": 5}),
    ("query-qmp-schema", {"name": "x"}), ("query-qmp-schema", [{"name": 5}]),
    ("query-uuid", [1]), ("query-cpus-fast", {}), ("add-fd", {"fdset-id": 1}), ("human-monitor-command", {}),
    ("blockdev-add", 5), ("device_add", None), ("device_del", "x"), ("block_resize", [1]),
]


@pytest.mark.parametrize("command", sorted(GOOD))
def test_what_qemu_sends_passes(command: str) -> None:
    assert checked(command, GOOD[command]) is GOOD[command]


@pytest.mark.parametrize(("command", "value"), BAD, ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD)])
def test_a_wrong_shape_is_a_malformed_reply(command: str, value: Any) -> None:
    with pytest.raises(MalformedReply, match=f"^{command}: malformed reply from the monitor: ") as info:
        checked(command, value)
    assert isinstance(info.value, BackendError) and info.value.exit_code == 2


def test_pci_bridges_nested_too_deep_are_refused_without_recursing_forever() -> None:
    device: dict[str, Any] = {"slot": 0}
    for _ in range(10_000):
        device = {"slot": 1, "pci_bridge": {"devices": [device]}}
    with pytest.raises(MalformedReply, match="nested over"):
        checked("query-pci", [{"bus": 0, "devices": [device]}])


def test_the_libvirt_backends_check_too() -> None:
    with pytest.raises(MalformedReply):
        parse_reply("query-named-block-nodes", '{"return": 5}')
    assert parse_reply("query-named-block-nodes", '{"return": []}') == []


@pytest.mark.parametrize(("value", "kind"), [(True, int), ("1", int), (None, str), ({}, str)])
def test_expect_names_the_property(value: Any, kind: type) -> None:
    with pytest.raises(MalformedReply, match="qom-get: malformed reply from the monitor: addr is"):
        expect("qom-get", value, kind, "addr")
    assert expect("qom-get", 8, int, "addr") == 8
