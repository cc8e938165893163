"""One set of limits for a VM's name and for seconds, the same in the CLI, the API and backend selection."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import hotluks
from hotluks.arguments import MAX_SOCKET_PATH, MAX_TIMEOUT, MAX_VM_NAME, check_seconds, check_vm
from hotluks.backends.select import choose_backend
from hotluks.cli.main import main
from hotluks.errors import InputError

NAME_OK = "é" * (MAX_VM_NAME // 2)  # 254 bytes: the limit counts UTF-8 bytes, not characters
NAME_LONG = "é" * (MAX_VM_NAME // 2) + "xx"  # 256 bytes, 129 characters
PATH_OK = "/" + "s" * (MAX_SOCKET_PATH - 1)
PATH_LONG = "/" + "s" * MAX_SOCKET_PATH


def _cli(vm: str, timeout: str = "5") -> int:
    try:
        return main(["repair", vm, "--timeout", timeout, "--backend", "qmp"])
    except SystemExit as exc:
        return int(exc.code or 0)


def _api(vm: object, timeout: object = 5) -> None:
    hotluks.aconnect(vm, timeout=timeout)  # type: ignore[arg-type]


ENTRIES: list[Callable[[Any], object]] = [check_vm, _api, lambda vm: choose_backend(vm, None, have_libvirt=True)]


@pytest.mark.parametrize("vm", ["", "a\nb", "vm\x7f", "vm\ud800", NAME_LONG, PATH_LONG, "unix:" + PATH_LONG, 5])
@pytest.mark.parametrize("entry", range(len(ENTRIES)))
def test_every_entry_refuses_the_same_names(vm: object, entry: int) -> None:
    with pytest.raises(InputError):
        ENTRIES[entry](vm)


def test_names_and_paths_at_the_limit_pass_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    for vm in (NAME_OK, PATH_OK, "unix:" + PATH_OK):
        assert check_vm(vm) == vm
        _api(vm)
    assert choose_backend(NAME_OK, None, have_libvirt=True) == "libvirt"
    assert _cli(PATH_OK) != 2 or "longer than a UNIX socket" not in capsys.readouterr().err
    assert _cli(NAME_LONG) == 2 and f"at most {MAX_VM_NAME}" in capsys.readouterr().err
    assert _cli(PATH_LONG) == 2 and "UNIX socket" in capsys.readouterr().err


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), MAX_TIMEOUT + 0.5, True, "10", None])
def test_seconds_have_one_rule(value: object) -> None:
    with pytest.raises(InputError, match="above 0 and at most"):
        check_seconds(value)
    with pytest.raises(InputError):
        _api("vm1", value)


def test_seconds_at_the_limit(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_seconds(MAX_TIMEOUT) == MAX_TIMEOUT and check_seconds(1) == 1.0
    _api("vm1", MAX_TIMEOUT)
    assert _cli("vm1", str(MAX_TIMEOUT + 1)) == 2 and "--timeout" in capsys.readouterr().err
