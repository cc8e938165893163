"""Records belong to the VM, not to the socket used to reach it: two ``-qmp`` sockets of one QEMU
share them (the README recommends a second socket for other tools)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.vms import make_disk, run_cli, start_vm

pytestmark = pytest.mark.qemu


@pytest.fixture
def three_sockets() -> Iterator[QemuProcess]:
    proc = start_vm(qmp_sockets=3)
    try:
        yield proc
    finally:
        proc.stop()


async def _instance(path: Path) -> str:
    backend = await QMPBackend(path).connect()
    try:
        return (await backend.identity()).instance
    finally:
        await backend.close()


def test_two_sockets_of_one_qemu_share_records(three_sockets: QemuProcess, tmp_path: Path) -> None:
    vm = three_sockets
    if not asyncio.run(_instance(vm.qmp_path)):
        pytest.skip("this QMP backend does not resolve a socket to its QEMU process yet (VMIdentity.instance '')")
    disk = make_disk(tmp_path, "attached-luks", "vdb")
    common = ["--state-dir", tmp_path / "state"]
    assert run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), *common).returncode == 0
    other = vm.extra_sockets[0]
    status = run_cli("status", other, *common, "--json")
    assert status.returncode == 0, status.stderr
    assert [(d["target"], d["status"], d["consistent"]) for d in json.loads(status.stdout)["disks"]] == [
        ("vdb", "attached", True)]
    again = run_cli("attach", f"unix:{other}", disk.xml_path, *disk.cli_secret(), *common, "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["already_attached"]
    assert run_cli("detach", vm.extra_sockets[1], "--target", "vdb", *common).returncode == 0
    assert run_cli("status", vm.qmp_path, *common).stdout.strip().endswith("no hotluks-managed disks")


def test_operator_keys_records_by_identity_on_real_qemu(three_sockets: QemuProcess, tmp_path: Path) -> None:
    """The runner's half, independent of how a backend finds its identity: same key, same records."""
    from hotluks.backends.base import VMIdentity
    from hotluks.runner.operator import Operator
    from hotluks.secrets import SecretValue

    vm = three_sockets
    assert vm.popen is not None
    ident = VMIdentity(f"qemu-pid-{vm.popen.pid}", f"pid-{vm.popen.pid}")

    class Resolved(QMPBackend):
        async def identity(self) -> VMIdentity:
            return ident

    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    secrets = {disk.secret_key: SecretValue(disk.passphrase)}

    async def go() -> None:
        first = await Resolved(vm.qmp_path).connect()
        second = await Resolved(vm.extra_sockets[0]).connect()
        try:
            await Operator(first, state_dir=tmp_path / "s").attach(disk.disk(), secrets, preflight=False)
            (entry,) = await Operator(second, state_dir=tmp_path / "s").status()
            assert (entry.target, entry.status, entry.consistent) == ("vdb", "attached", True)
            again = await Operator(second, state_dir=tmp_path / "s").attach(disk.disk(), secrets, preflight=False)
            assert again.already_attached
            gone = await Operator(second, state_dir=tmp_path / "s").detach("vdb", timeout=10)
            assert not gone.already_absent and await Operator(first, state_dir=tmp_path / "s").status() == []
        finally:
            await first.close()
            await second.close()

    asyncio.run(go())
