"""A QMP socket resolves to the QEMU behind it: every socket of one QEMU, one identity."""

from __future__ import annotations

import asyncio
import uuid as uuidlib
from pathlib import Path

import pytest

from hotluks.backends.base import VMIdentity
from hotluks.backends.identity import start_time
from hotluks.backends.qmp import QMPBackend
from hotluks.backends.select import open_backend
from hotluks.demo.qemu.launcher import start_qemu
from hotluks.errors import DomainNotFound, NotRunning

pytestmark = [pytest.mark.qemu]


async def _identity(path: Path) -> VMIdentity:
    async with await QMPBackend(path).connect() as backend:
        return await backend.identity()


def test_two_sockets_of_one_qemu_share_one_identity() -> None:
    with start_qemu(qmp_sockets=2) as vm:
        first = asyncio.run(_identity(vm.qmp_path))
        second = asyncio.run(_identity(vm.extra_sockets[0]))
        via_unix = asyncio.run(_identity(Path(f"unix:{vm.qmp_path}".removeprefix("unix:"))))
        assert first == second == via_unix
        assert first.instance == f"{vm.pid}-{start_time(vm.pid)}"
        assert first.key == f"qemu-pid{vm.pid}-{start_time(vm.pid)}"  # no -uuid: the process names the VM


def test_uuid_names_the_vm_and_a_restart_is_a_new_instance() -> None:
    vm_uuid = str(uuidlib.uuid4())
    with start_qemu(["-uuid", vm_uuid]) as vm:
        before = asyncio.run(_identity(vm.qmp_path))
    with start_qemu(["-uuid", vm_uuid.upper()]) as vm:
        after = asyncio.run(_identity(vm.qmp_path))
    assert before.key == after.key == vm_uuid
    assert before.instance and after.instance and before.instance != after.instance


def test_a_socket_nobody_listens_on_is_not_running(tmp_path: Path) -> None:
    with start_qemu() as vm:
        path = vm.qmp_path
        copy = tmp_path / "stale.sock"
        path.rename(copy)  # the socket file outlives nothing once QEMU is gone
        vm.stop()
        with pytest.raises(NotRunning):
            asyncio.run(open_backend(str(copy)))
    with pytest.raises(DomainNotFound):
        asyncio.run(open_backend(f"{tmp_path}/no-such.sock"))


def test_second_qmp_socket_sees_and_detaches_what_the_first_attached(tmp_path: Path) -> None:
    """The README's advice (a second -qmp socket for hotluks) no longer hides records."""
    import json

    from testsupport.vms import make_disk, run_cli, start_vm

    state = tmp_path / "state"
    disk = make_disk(tmp_path / "disks", "attached-luks", "vdb")
    with start_vm() as vm:  # root ports for the hot-plug, two -qmp sockets
        first, second = vm.qmp_path, vm.extra_sockets[0]
        attach = run_cli("attach", first, disk.xml_path, *disk.cli_secret(), "--state-dir", state)
        assert attach.returncode == 0, attach.stderr
        status = run_cli("status", f"unix:{second}", "--state-dir", state, "--json")
        assert status.returncode == 0, status.stderr
        assert [d["target"] for d in json.loads(status.stdout)["disks"]] == ["vdb"]
        detach = run_cli("detach", second, "--target", "vdb", "--state-dir", state)
        assert detach.returncode == 0, detach.stderr
        again = run_cli("status", first, "--state-dir", state, "--json")
        assert json.loads(again.stdout)["disks"] == []


def test_a_proxy_in_between_does_not_change_the_identity() -> None:
    """The socket's peer is then the proxy, not QEMU: the vCPU threads still name the QEMU."""
    from testsupport.qmpproxy import QMPProxy

    with start_qemu(qmp_sockets=2) as vm, QMPProxy(vm.extra_sockets[0]) as proxy:
        assert asyncio.run(_identity(proxy.path)) == asyncio.run(_identity(vm.qmp_path))


def test_without_visible_vcpu_threads_the_socket_peer_names_the_qemu(monkeypatch: pytest.MonkeyPatch) -> None:
    import hotluks.backends.qmp as qmp

    async def invisible(backend: object) -> None:
        return None

    with start_qemu() as vm:
        monkeypatch.setattr(qmp, "qemu_pid_from_vcpus", invisible)
        assert asyncio.run(_identity(vm.qmp_path)).instance == f"{vm.pid}-{start_time(vm.pid)}"  # SO_PEERCRED
