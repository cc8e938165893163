"""Boot the same guest through a real libvirtd and talk to its agent on the domain's serial port."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator

import pytest

from hotluks.demo.guest.agent import GuestAgent
from hotluks.demo.guest.build import GuestArtifacts
from hotluks.demo.guest.vm import libvirt_boot_options
from testsupport.libvirtd import LibvirtDaemon, give_to_qemu, qemu_accessible_dir, start_domain, start_libvirtd

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt]


@pytest.fixture(scope="module")
def libvirt_daemon() -> Iterator[LibvirtDaemon]:
    daemon = start_libvirtd()
    try:
        yield daemon
    finally:
        daemon.stop()


def test_guest_boots_under_libvirt_with_agent_on_ttys0(libvirt_daemon: LibvirtDaemon,
                                                        guest_artifacts: GuestArtifacts) -> None:
    with qemu_accessible_dir() as files:
        kernel = files / guest_artifacts.kernel.name
        initrd = files / guest_artifacts.initrd.name
        for src, dst in ((guest_artifacts.kernel, kernel), (guest_artifacts.initrd, initrd)):
            shutil.copyfile(src, dst)
            give_to_qemu(dst)
        local = guest_artifacts.__class__(guest_artifacts.kernel_version, kernel, initrd,
                                          guest_artifacts.modules, guest_artifacts.bzimage)
        options = libvirt_boot_options(local, files / "agent.sock")
        with start_domain(libvirt_daemon.uri, paused=False, **options) as domain:
            assert domain.qemu_pid() is not None

            async def main() -> None:
                async with await GuestAgent.open(files / "agent.sock", timeout=30) as agent:
                    waited = await agent.wait_ready(90)
                    print(f"libvirt guest: agent ready {waited:.2f}s after connecting")
                    assert (await agent.command("ping")).lines == ("pong",)
                    assert await agent.block_devices() == []
                    log = "\n".join(await agent.dmesg(400))
                    assert "Virtio SCSI HBA" in log  # the domain's virtio-scsi controller

            asyncio.run(asyncio.wait_for(main(), 120))
