"""``attach --persistent`` on the QMP path (fake QEMU named ``libvirt``; the definition is stubbed, the
real one is in integration/lifecycle/test_libvirt_persist.py): the check runs before anything is sent,
and a definition that cannot be written rolls the live attach back (exit 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

import pytest

from hotluks.backends.base import MonitorBackend
from hotluks.errors import BackendError, RefusedError, RolledBackError
from hotluks.lifecycle.persist import Persisted
from hotluks.model import Disk
from hotluks.runner import operator as operator_module
from hotluks.runner.keep import Keep
from hotluks.runner.operator import Operator
from hotluks.secrets import SecretValue
from testsupport.fakeqemu import FakeQemu

from .fakedisks import SECRETS, make

MUTATING = {"object-add", "blockdev-add", "device_add", "add-fd"}


class StubKeep(Keep):
    calls: list[str]
    refuse: bool = False
    fail: bool = False

    async def check(self, backend: MonitorBackend, disk: Disk, secrets: Mapping[str, SecretValue]) -> None:
        self.calls.append("check")
        if self.refuse:
            raise RefusedError("not writing vdb into dom's definition: … could not open /x")

    async def write(self, backend: MonitorBackend, disk: Disk, secrets: Mapping[str, SecretValue]) -> Persisted:
        self.calls.append("write")
        if self.fail:
            raise BackendError("libvirt: defineXML failed (injected)")
        return Persisted("dom", disk.target_dev, "/keys/u.key", True, True)


def _stub(monkeypatch: pytest.MonkeyPatch, **kw: bool) -> list[str]:
    calls: list[str] = []
    keep = StubKeep("dom", "test:///default")
    object.__setattr__(keep, "calls", calls)
    for k, v in kw.items():
        object.__setattr__(keep, k, v)
    monkeypatch.setattr(operator_module, "keep_for", lambda *_a: keep)
    return calls


def _names(fake: FakeQemu) -> tuple[set[str], set[str], set[str], set[int]]:
    st = fake.state
    return set(st.nodes), set(st.objects), set(st.devices), set(st.fdsets)


def test_a_refused_definition_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub(monkeypatch, refuse=True)
    fake = FakeQemu(passes_fds=True)
    with pytest.raises(RefusedError, match="could not open") as info:
        asyncio.run(Operator(fake, state_dir=tmp_path / "s").attach(make(tmp_path, "detached-header-raw"), SECRETS,
                                                                   preflight=False, persistent=True))
    assert info.value.exit_code == 2 and calls == ["check"]
    assert not [c for c, _ in fake.log if c in MUTATING]


def test_a_failed_definition_write_rolls_the_live_attach_back(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub(monkeypatch, fail=True)
    fake = FakeQemu(passes_fds=True)
    before = _names(fake)
    with pytest.raises(RolledBackError, match="defineXML failed") as info:
        asyncio.run(Operator(fake, state_dir=tmp_path / "s").attach(make(tmp_path, "detached-header-raw"), SECRETS,
                                                                   preflight=False, persistent=True))
    assert info.value.exit_code == 1 and calls == ["check", "write"]
    assert "device_add" in [c for c, _ in fake.log] and _names(fake) == before
    assert asyncio.run(Operator(fake, state_dir=tmp_path / "s").status()) == []  # no record left


def test_persistent_result_names_the_key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _stub(monkeypatch)
    fake = FakeQemu(passes_fds=True)
    result = asyncio.run(Operator(fake, state_dir=tmp_path / "s").attach(
        make(tmp_path, "detached-header-raw"), SECRETS, preflight=False, persistent=True))
    assert (result.path, result.persistent, result.key_file) == ("qmp", True, "/keys/u.key")
    assert result.to_json()["persistent"] and calls == ["check", "write"]
    plain = asyncio.run(Operator(FakeQemu(), state_dir=tmp_path / "t").attach(
        make(tmp_path, "attached-luks", "vdc", name="c"), SECRETS, preflight=False))
    assert (plain.path, plain.persistent, plain.key_file) == ("qmp", False, None)
