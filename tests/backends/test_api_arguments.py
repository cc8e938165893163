"""The API's front doors raise only hotluks errors for bad arguments, and never block on odd files."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

import hotluks
from hotluks.api import _disk, _secret_values, _target
from hotluks.errors import DomainNotFound, HotluksError, InputError, InvalidDisk, SecretError, XMLError

EXAMPLE = Path(__file__).resolve().parents[2] / "xml" / "examples" / "qemu-doc-detached-qcow2.xml"


def _bad_paths(tmp_path: Path) -> dict[str, Any]:
    fifo = tmp_path / "disk.fifo"
    os.mkfifo(fifo)  # nobody ever writes: reading it would block forever
    loop = tmp_path / "loop.xml"
    loop.symlink_to(loop)
    plain = tmp_path / "plain.xml"
    plain.write_text("x")
    return {
        "missing": tmp_path / "nope.xml", "directory": tmp_path, "fifo": fifo, "fifo-as-str": str(fifo),
        "char-device": Path("/dev/zero"), "symlink-loop": loop, "not-a-directory": plain / "x.xml",
        "name-too-long": tmp_path / ("x" * 5000), "nul-in-path": str(tmp_path / "a\0b"),
        "surrogate-path": Path(str(tmp_path / "\ud800.xml")),
    }


def test_from_xml_refuses_odd_paths_with_invalid_disk(tmp_path: Path) -> None:
    for name, arg in _bad_paths(tmp_path).items():
        started = time.monotonic()
        with pytest.raises(InvalidDisk) as info:
            hotluks.Disk.from_xml(arg)
        assert time.monotonic() - started < 2, name
        assert info.value.exit_code == 2 and isinstance(info.value, InputError), name


@pytest.mark.parametrize("arg", [None, 12, 1.5, ["<disk/>"], object(), "<disk>\ud800</disk>", b"", "  "])
def test_from_xml_refuses_wrong_types_and_text(arg: Any) -> None:
    with pytest.raises(InvalidDisk):
        hotluks.Disk.from_xml(arg)


def test_from_xml_accepts_text_bytes_and_path_likes() -> None:
    text = EXAMPLE.read_text()
    disks = {hotluks.Disk.from_xml(x).target_dev for x in (EXAMPLE, str(EXAMPLE), text, text.encode(),
                                                            bytearray(text.encode()))}
    assert disks == {_disk(EXAMPLE).target_dev} == {"vdb"}
    with pytest.raises(XMLError):
        hotluks.Disk.from_xml("<disk type='file'/>")


def test_session_arguments_are_typed_errors() -> None:
    with pytest.raises(SecretError):
        _secret_values({"uuid": 5})  # type: ignore[dict-item]
    with pytest.raises(SecretError):
        _secret_values([("a", b"b")])  # type: ignore[arg-type]
    with pytest.raises(SecretError):
        _secret_values({"": b"x"})
    with pytest.raises(SecretError):
        _secret_values({"k": "\ud800"})
    assert _secret_values({"k": "pässword", "b": bytearray(b"\x00\xff")})["k"].value == "pässword".encode()
    with pytest.raises(InvalidDisk):
        _disk(42)
    with pytest.raises(InputError):
        _target(None)
    with pytest.raises(InputError):
        _target("")


@pytest.mark.parametrize("kwargs", [
    {"vm": 5}, {"vm": ""}, {"vm": "x" * 5000}, {"vm": "a\nb"}, {"vm": "vm\ud800"},
    {"vm": "vm1", "timeout": float("nan")}, {"vm": "vm1", "timeout": -5}, {"vm": "vm1", "timeout": True},
    {"vm": "vm1", "timeout": "10"}, {"vm": "vm1", "master_key": b"short"}, {"vm": "vm1", "master_key": "k" * 32},
    {"vm": "vm1", "uri": 3}, {"vm": "vm1", "state_dir": 3}, {"vm": "vm1", "backend": ["qmp"]},
])
def test_connect_refuses_bad_arguments_before_connecting(kwargs: dict[str, Any]) -> None:
    vm = kwargs.pop("vm")
    with pytest.raises(HotluksError) as sync_info:
        hotluks.connect(vm, **kwargs)
    with pytest.raises(HotluksError) as async_info:
        hotluks.aconnect(vm, **kwargs)
    assert type(sync_info.value) is type(async_info.value) and sync_info.value.exit_code == 2


def test_connect_to_a_missing_socket_inside_a_running_loop_is_typed(tmp_path: Path) -> None:
    """Inside a coroutine, connect() runs its loop on a private thread: the real error, not 'loop running'."""
    async def main() -> None:
        with pytest.raises(DomainNotFound):
            hotluks.connect(str(tmp_path / "no.sock"))

    asyncio.run(main())
