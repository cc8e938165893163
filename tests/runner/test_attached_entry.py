"""One way to lock and journal a VM: resize and rotate go through ``Operator.attached`` (fake QEMU)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from hotluks.errors import LockedError, NotAttached, RefusedError
from hotluks.headers.rotate import rotate
from hotluks.runner.operator import Operator
from hotluks.runner.resize import resize
from hotluks.runner.statedir import UntrustedStateDirError
from testsupport.fakeqemu import FakeQemu

from .fakedisks import SECRETS, make


def test_attached_holds_the_vm_lock_and_refuses_what_is_not_attached(tmp_path: Path) -> None:
    fake = FakeQemu()
    state = tmp_path / "s"

    async def go() -> None:
        op = Operator(fake, state_dir=state)
        await op.attach(make(tmp_path, "attached-luks"), SECRETS, preflight=False)
        async with op.attached("vdb") as (journal, record):
            assert record.status == "attached" and journal.path("vdb").exists()
            with pytest.raises(LockedError):  # attach, detach, resize and rotate all wait for this lock
                await Operator(fake, state_dir=state, lock_timeout=0.2).detach("vdb")
        with pytest.raises(NotAttached, match="no disk attached on vdz"):
            await resize(op, "vdz", "+1M")
        journal = await op.journal()
        loaded = journal.load("vdb")
        assert loaded is not None
        journal.set_status(loaded, "detaching")
        with pytest.raises(RefusedError, match="interrupted detaching"):
            await resize(op, "vdb", "+1M")
        journal.set_status(loaded, "attached")
        journal.path("vdb").write_text("{not json\n")
        with pytest.raises(RefusedError, match="quarantine"):
            await resize(op, "vdb", "+1M")

    asyncio.run(go())


def test_rotate_takes_the_operators_lock_with_its_trust_check(tmp_path: Path) -> None:
    """rotate refuses a target that is not attached (exit 2) and, like every locked operation, a state
    directory someone loosened since the session began."""
    fake = FakeQemu()
    state = tmp_path / "s"
    disk = make(tmp_path, "detached-header-raw")

    async def go() -> None:
        op = Operator(fake, state_dir=state)
        with pytest.raises(NotAttached) as info:
            await rotate(op, disk, b"new passphrase", SECRETS)
        assert info.value.exit_code == 2
        await op.attach(disk, SECRETS, preflight=False)
        os.chmod(state, 0o777)
        try:
            with pytest.raises(UntrustedStateDirError):
                await rotate(op, disk, b"new passphrase", SECRETS)
        finally:
            os.chmod(state, 0o700)
        await op.detach("vdb")

    asyncio.run(go())
