"""The fault matrix of tests/runner/test_fault_matrix.py, sampled on real QEMU: every sampled case must
end exactly as on the fake QEMU (exit code, record status, VM as before, VM as before after repair).

The sample takes every case kind, spread over the steps of the detached-header shape on both buses.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.secrets import SecretValue
from testsupport.fakeqemu import FakeQemu
from testsupport.faultmatrix import Case, FaultInjector, Outcome, cases, run_case, run_detach_case
from testsupport.vms import Monitor, Snapshot, make_disk, target_for

pytestmark = pytest.mark.qemu

SAMPLE_EVERY = 2


async def _probe(backend: object, disk: object, secrets: dict[str, SecretValue], state: Path) -> FaultInjector:
    await run_case(backend, disk, secrets, state, None)  # type: ignore[arg-type]  # fills capability caches
    outcome, probe = await run_case(backend, disk, secrets, state, None)  # type: ignore[arg-type]
    assert outcome.exit_code == 0 and outcome.repaired, outcome
    return probe


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_real_qemu_agrees_with_the_fake(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                        bus: str) -> None:
    test_disk = make_disk(tmp_path, "detached-header-qcow2", target_for(bus, 0), bus)
    disk = test_disk.disk()
    secrets = {test_disk.secret_key: SecretValue(test_disk.passphrase)}

    async def go() -> tuple[dict[str, Outcome], dict[str, Outcome]]:
        fake = FakeQemu()
        fake_probe = await _probe(fake, disk, secrets, tmp_path / "fake-state")
        real = await QMPBackend(vm.qmp_path).connect()
        try:
            real_probe = await _probe(real, disk, secrets, tmp_path / "real-state")
            assert real_probe.commands == fake_probe.commands  # the same conversation, call for call
            every = cases(len(fake_probe.mutations), fake_probe.calls, len(fake_probe.mutations) + 2)
            sample: list[Case] = [c for kind in dict.fromkeys(c.kind for c in every)
                                  for c in [c for c in every if c.kind == kind][1::SAMPLE_EVERY]]
            assert {c.kind for c in sample} == {c.kind for c in every}
            on_fake, on_real = {}, {}
            for case in sample:
                on_fake[str(case)] = (await run_case(fake, disk, secrets, tmp_path / "fake-state", case))[0]
                on_real[str(case)] = (await run_case(real, disk, secrets, tmp_path / "real-state", case,
                                                     timeout=5))[0]
            return on_fake, on_real
        finally:
            await real.close()

    on_fake, on_real = asyncio.run(go())
    differ = {k: (on_fake[k], on_real[k]) for k in on_fake if on_fake[k].key() != on_real[k].key()}
    assert not differ, differ
    assert len(on_real) >= 15 and all(o.repaired for o in on_real.values())
    assert monitor.snapshot() == initial


def test_real_qemu_agrees_with_the_fake_on_detach(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                  tmp_path: Path) -> None:
    test_disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    disk = test_disk.disk()
    secrets = {test_disk.secret_key: SecretValue(test_disk.passphrase)}

    async def go() -> tuple[dict[str, Outcome], dict[str, Outcome]]:
        fake = FakeQemu()
        real = await QMPBackend(vm.qmp_path).connect()
        try:
            probes = []
            for backend, state in ((fake, tmp_path / "fake-state"), (real, tmp_path / "real-state")):
                await run_detach_case(backend, disk, secrets, state, None)
                outcome, probe = await run_detach_case(backend, disk, secrets, state, None)
                assert outcome.exit_code == 0 and outcome.repaired, outcome
                probes.append(probe)
            assert probes[0].commands == probes[1].commands
            every = [c for c in cases(len(probes[0].mutations), probes[0].calls, len(probes[0].mutations) + 2)
                     if c.kind != "undo-fails"]
            on_fake, on_real = {}, {}
            for case in every[::2]:
                on_fake[str(case)] = (await run_detach_case(fake, disk, secrets, tmp_path / "fake-state", case))[0]
                on_real[str(case)] = (await run_detach_case(real, disk, secrets, tmp_path / "real-state", case))[0]
            return on_fake, on_real
        finally:
            await real.close()

    on_fake, on_real = asyncio.run(go())
    differ = {k: (on_fake[k], on_real[k]) for k in on_fake if on_fake[k].key() != on_real[k].key()}
    assert not differ, differ
    assert len(on_real) >= 10
    assert monitor.snapshot() == initial
