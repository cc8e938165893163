"""Concurrency: CLI processes racing on one VM, the asyncio API on many VMs from one loop, and a
QMP socket that another client holds."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from collections import defaultdict
from contextlib import ExitStack
from pathlib import Path

import pytest

import hotluks
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import BackendError
from testsupport.qmpproxy import QMPProxy
from testsupport.vms import Monitor, Snapshot, hotluks_cmd, make_disk, qemu_io_read, run_cli, start_vm

pytestmark = pytest.mark.qemu


@pytest.mark.parametrize("route", ["direct", "proxy"])
def test_cli_processes_attach_to_one_vm_at_once(vm: QemuProcess, monitor: Monitor, initial: Snapshot,
                                                 tmp_path: Path, state_dir: Path, route: str) -> None:
    """Four `hotluks attach` processes started together on one VM: all succeed, one after the other.

    QEMU's QMP listener keeps one waiting client and refuses more with EAGAIN; hotluks
    waits its turn. Through the recording proxy we also see that the sessions never interleave.
    """
    disks = [make_disk(tmp_path, "detached-header-raw", "vdb"), make_disk(tmp_path, "attached-luks", "vdc"),
             make_disk(tmp_path, "qcow2-native", "sdb", "scsi"), make_disk(tmp_path, "attached-luks", "vdd")]
    with ExitStack() as stack:
        proxy = stack.enter_context(QMPProxy(vm.qmp_path)) if route == "proxy" else None
        sock = str(proxy.path if proxy else vm.qmp_path)
        procs = [subprocess.Popen(hotluks_cmd("attach", sock, d.xml_path, *d.cli_secret(), "--state-dir", state_dir),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in disks]
        outs = [p.communicate(timeout=120) for p in procs]
        chunks = list(proxy.chunks) if proxy else []
        with hotluks.connect(sock, state_dir=state_dir) as session:
            status = session.status()
    for proc, (_out, err) in zip(procs, outs):
        assert proc.returncode == 0, err
    assert sorted((s["target"], s["consistent"]) for s in status) == sorted((d.target, True) for d in disks)
    snap = monitor.snapshot()
    assert {d.device for d in disks} <= snap.devices
    # each virtio disk got its own root port
    buses = {monitor.cmd("qom-get", {"path": f"/machine/peripheral/{d.device}", "property": "parent_bus"})
             for d in disks if d.bus == "virtio"}
    assert len(buses) == 3
    for d in disks:
        top = monitor.cmd("qom-get", {"path": f"/machine/peripheral/{d.device}", "property": "drive"})
        assert qemu_io_read(monitor, vm, top) == "ok"
    if route == "direct":
        return
    # serialized: the sessions' traffic never interleaves on the monitor (one block per connection)
    order = [c.connection for c in chunks if c.direction == "c2s"]
    blocks = [conn for i, conn in enumerate(order) if i == 0 or order[i - 1] != conn]
    assert len(blocks) == len(set(blocks)) == 4, blocks


def test_asyncio_api_attaches_to_many_vms_in_parallel(tmp_path: Path) -> None:
    """One event loop, four VMs whose monitors answer 40 ms late: total time ≈ one VM, not four."""
    n_vms, delay_ms = 4, 40
    with ExitStack() as stack:
        vms = [stack.enter_context(start_vm()) for _ in range(n_vms)]
        proxies = [stack.enter_context(QMPProxy(v.qmp_path, delay_ms=delay_ms)) for v in vms]
        monitors = [stack.enter_context(Monitor(v.extra_sockets[0])) for v in vms]
        initial = [m.snapshot() for m in monitors]
        disks = {i: [make_disk(tmp_path / f"vm{i}", "detached-header-qcow2", "vdb"),
                     make_disk(tmp_path / f"vm{i}", "attached-luks", "sdb", "scsi")] for i in range(n_vms)}
        took: dict[int, float] = {}
        tops: dict[int, list[str]] = defaultdict(list)

        async def one_vm(i: int) -> None:
            started = time.monotonic()
            async with hotluks.aconnect(str(proxies[i].path), state_dir=tmp_path / "state") as session:
                for d in disks[i]:
                    result = await session.attach(d.disk(), d.secrets(), preflight=False)
                    tops[i].append(result.top_node)
                assert all(s["consistent"] for s in await session.status())
            took[i] = time.monotonic() - started

        async def main() -> float:
            started = time.monotonic()
            await asyncio.gather(*(one_vm(i) for i in range(n_vms)))
            return time.monotonic() - started

        wall = asyncio.run(main())
        for i in range(n_vms):
            assert len(tops[i]) == 2 and all(qemu_io_read(monitors[i], vms[i], t) == "ok" for t in tops[i])

        async def detach_all() -> None:
            async def one(i: int) -> None:
                async with hotluks.aconnect(str(proxies[i].path), state_dir=tmp_path / "state") as session:
                    await asyncio.gather(*(session.detach(d.target, timeout=10) for d in disks[i]))
            await asyncio.gather(*(one(i) for i in range(n_vms)))

        asyncio.run(detach_all())
        assert [m.snapshot() for m in monitors] == initial
    # if the sessions were serialized, wall ≈ sum(took); in parallel it is ≈ max(took)
    assert wall < 0.6 * sum(took.values()), (wall, took)


def test_socket_held_by_another_client_fails_within_timeout(vm: QemuProcess, tmp_path: Path) -> None:
    disk = make_disk(tmp_path, "attached-luks", "vdb")
    with Monitor(vm.qmp_path):  # someone else holds hotluks' QMP socket
        started = time.monotonic()
        proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir",
                       tmp_path / "state", "--timeout", "2")
        assert time.monotonic() - started < 10
        assert proc.returncode == 2, proc.stderr
        assert "another client probably holds it" in proc.stderr
        with pytest.raises(BackendError) as info:
            hotluks.connect(str(vm.qmp_path), state_dir=tmp_path / "state", timeout=1)
        assert info.value.exit_code == 2 and "second -qmp socket" in str(info.value)
    # once released, the same command works
    proc = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), "--state-dir", tmp_path / "state")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.libvirt
def test_cli_processes_on_a_libvirt_domain_are_serialized_by_the_lock(tmp_path: Path) -> None:
    """Through libvirt, clients really run at once: only the per-VM lock keeps their placement
    probes and plans from interleaving (two would pick the same free root port and one would fail)."""
    pytest.importorskip("libvirt")
    from testsupport.libvirtd import give_to_qemu, qemu_accessible_dir, start_domain, start_libvirtd

    daemon = start_libvirtd()
    try:
        with start_domain(daemon.uri, root_ports=5, scsi=False) as domain, qemu_accessible_dir() as work:
            disks = [make_disk(work / "disks", shape, f"vd{letter}") for shape, letter in
                     zip(["attached-luks", "detached-header-raw", "attached-luks", "detached-header-qcow2"], "bcde")]
            for d in disks:
                for path in d.files:
                    give_to_qemu(path)
            common = ["--connect", domain.uri, "--backend", "libvirt", "--state-dir", str(tmp_path / "state")]
            procs = [subprocess.Popen(hotluks_cmd("attach", domain.name, d.xml_path, *d.cli_secret(), *common),
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for d in disks]
            outs = [p.communicate(timeout=180) for p in procs]
            for proc, (_, err) in zip(procs, outs):
                assert proc.returncode == 0, err
            status = run_cli("status", domain.name, *common, "--json")
            disks_status = json.loads(status.stdout)["disks"]
            assert sorted((s["target"], s["consistent"]) for s in disks_status) == sorted(
                (d.target, True) for d in disks)
            import libvirt
            import libvirt_qemu

            conn = libvirt.open(domain.uri)
            try:
                dom = conn.lookupByName(domain.name)
                ports = {libvirt_qemu.qemuMonitorCommand(dom, json.dumps({"execute": "qom-get", "arguments": {
                    "path": f"/machine/peripheral/{d.device}", "property": "parent_bus"}}), 0) for d in disks}
            finally:
                conn.close()
            assert len(ports) == 4  # four different root ports
            for d in disks:
                assert run_cli("detach", domain.name, "--target", d.target, *common).returncode == 0
    finally:
        daemon.stop()
