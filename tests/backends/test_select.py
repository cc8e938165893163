"""Choosing a backend from how the VM is named."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from hotluks.backends import select
from hotluks.errors import InputError


def test_explicit_backend_wins() -> None:
    for name in ("qmp", "libvirt", "virsh"):
        assert select.choose_backend("anything", name, have_libvirt=True) == name
    with pytest.raises(InputError, match="unknown backend"):
        select.choose_backend("vm", "ssh", have_libvirt=True)


def test_socket_names_choose_qmp(tmp_path: Path) -> None:
    path = tmp_path / "qmp.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        assert select.choose_backend(str(path), None, have_libvirt=True) == "qmp"
    assert select.choose_backend("unix:/run/x.sock", None, have_libvirt=True) == "qmp"


def test_domain_names_choose_libvirt_or_virsh() -> None:
    assert select.choose_backend("web-1", None, have_libvirt=True) == "libvirt"
    assert select.choose_backend("web-1", None, have_libvirt=False) == "virsh"


def test_path_that_is_no_socket_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="neither a QMP socket"):
        select.choose_backend(str(tmp_path / "missing.sock"), None, have_libvirt=True)


def test_libvirt_python_detected() -> None:
    assert select.libvirt_python_available() is True  # installed with the test extras


def test_without_libvirt_python_virsh_is_used(mocker: MockerFixture) -> None:
    mocker.patch.object(select, "libvirt_python_available", return_value=False)
    opened = mocker.patch("hotluks.backends.virsh.VirshBackend.connect", autospec=True,
                          side_effect=lambda self: self)
    backend = asyncio.run(select.open_backend("web-1", uri="qemu:///session"))
    assert backend.name == "virsh" and backend.vm == "web-1" and opened.called


def test_qmp_name_that_is_not_a_socket(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a QMP socket"):
        asyncio.run(select.open_backend(f"unix:{tmp_path}/none.sock"))
