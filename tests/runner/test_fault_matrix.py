"""The whole fault matrix on the fake QEMU: every step of every shape failing before and after QEMU
ran it, every undo command failing, cancellation at every backend call, ENOSPC at every journal write.

Whatever happens, the exit code follows the phase (2 before the first mutation, then 1 with the VM
verified as before, or 3 with a record) and ``repair`` leaves the VM exactly as it was.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from testsupport.fakeqemu import FakeQemu
from testsupport.faultmatrix import Case, cases, first_mutation, run_case, run_detach_case

from .fakedisks import SECRETS, SHAPES, make


async def _matrix(tmp_path: Path, shape: str, bus: str, fds: bool) -> dict[str, tuple[int, ...]]:
    disk = make(tmp_path, shape, "vdb" if bus == "virtio" else "sdb", bus)
    fake = FakeQemu(passes_fds=fds)
    state = tmp_path / "state"
    await run_case(fake, disk, SECRETS, state, None)  # fills the per-process capability cache
    baseline, probe = await run_case(fake, disk, SECRETS, state, None)
    attach_writes = 1 + len(probe.mutations) + 1  # the record, a mark per step, the status "attached"
    assert baseline.exit_code == 0 and baseline.repaired, baseline
    fake.log.clear()
    seen: dict[str, tuple[int, ...]] = {}
    boundary = first_mutation(probe.commands)
    for case in cases(len(probe.mutations), probe.calls, attach_writes):
        outcome, faulty = await run_case(fake, disk, SECRETS, state, case)
        where = f"{shape}/{bus}/fds={fds} {case}: {outcome}"
        assert outcome.exit_code in (1, 2, 3), where
        assert outcome.repaired, where  # repair always gets the VM back to exactly as before
        if outcome.exit_code == 2:
            assert outcome.as_before and outcome.record is None and not faulty.mutations, where
        if outcome.exit_code == 1:
            assert outcome.as_before and outcome.record is None and "as before" in outcome.detail, where
        if outcome.exit_code == 3:
            assert "hotluks repair" in outcome.detail, where
            assert outcome.record in ("needs-repair", "detaching"), where
        if case.kind in ("fail-before", "fail-after"):
            assert outcome.exit_code == 1, where
        if case.kind == "journal-oserror":
            assert outcome.exit_code == (2 if case.at <= 2 else 1), where  # the record, the first mark
        if case.kind.startswith("cancel"):
            # once the first mutating command is on its way, it may have reached QEMU: rollback (1)
            assert outcome.exit_code == (2 if case.at < boundary else 1), where
        seen[str(case)] = outcome.key()  # type: ignore[assignment]
    assert len(seen) > 40
    return seen


@pytest.mark.parametrize("fds", [False, True], ids=["paths", "fdsets"])
@pytest.mark.parametrize("bus", ["virtio", "scsi"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fault_matrix(tmp_path: Path, shape: str, bus: str, fds: bool) -> None:
    started = time.monotonic()
    seen = asyncio.run(_matrix(tmp_path, shape, bus, fds))
    kinds = {key.split("@")[0] for key in seen}
    assert kinds == {"fail-before", "fail-after", "undo-fails", "cancel-before", "cancel-after", "journal-oserror"}
    assert any(v[0] == 3 for v in seen.values())  # undo failures do end in exit 3
    assert time.monotonic() - started < 15


def test_case_names_are_stable() -> None:
    assert str(Case("undo-fails", 3, "blockdev-del")) == "undo-fails@3:blockdev-del"


async def _detach_matrix(tmp_path: Path, shape: str, fds: bool) -> int:
    disk = make(tmp_path, shape)
    fake = FakeQemu(passes_fds=fds)
    state = tmp_path / "state"
    await run_detach_case(fake, disk, SECRETS, state, None)
    baseline, probe = await run_detach_case(fake, disk, SECRETS, state, None)
    assert baseline.exit_code == 0 and baseline.as_before and baseline.repaired, baseline
    writes = 1 + len(probe.mutations) + 1  # "detaching", a mark per undone step, the removal
    every = [c for c in cases(len(probe.mutations), probe.calls, writes) if c.kind != "undo-fails"]
    for case in every:
        outcome, _ = await run_detach_case(fake, disk, SECRETS, state, case)
        where = f"detach {shape}/fds={fds} {case}: {outcome}"
        assert outcome.repaired, where
        assert outcome.exit_code in (0, 2, 3), where
        if outcome.exit_code == 0:
            assert outcome.as_before and outcome.record in (None, "detaching"), where
        if outcome.exit_code == 2:
            assert case.kind == "journal-oserror" and case.at == 1 and outcome.record == "attached", where
        if outcome.exit_code == 3:
            assert not outcome.as_before and outcome.record == "detaching" and "repair" in outcome.detail, where
        if case.kind.startswith("cancel"):
            assert outcome.exit_code == 0, where  # a detach is an undo: it finishes, shielded
        if case.kind == "fail-before":
            assert outcome.exit_code == 3, where
    return len(every)


@pytest.mark.parametrize("fds", [False, True], ids=["paths", "fdsets"])
@pytest.mark.parametrize("shape", SHAPES)
def test_detach_fault_matrix(tmp_path: Path, shape: str, fds: bool) -> None:
    assert asyncio.run(_detach_matrix(tmp_path, shape, fds)) > 20
