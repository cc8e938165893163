"""Build (cached) + boot the tiny guest under TCG and talk to its agent."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import os
import subprocess
import time
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.guest.build import GuestArtifacts, build_guest
from hotluks.demo.guest.errors import GuestAgentError, GuestBootError
from hotluks.demo.guest.kernelimage import has_pvh_note
from hotluks.demo.guest.vm import BootedGuest, boot_guest

pytestmark = [pytest.mark.guest, pytest.mark.qemu]


def test_build_is_cached_and_complete(guest_artifacts: GuestArtifacts) -> None:
    start = time.monotonic()
    again = build_guest()
    cached_seconds = time.monotonic() - start
    print(f"cached build: {cached_seconds:.2f}s")
    assert again == guest_artifacts
    assert cached_seconds < 5
    kernel = again.kernel.read_bytes()
    assert kernel[:4] == b"\x7fELF" and has_pvh_note(kernel), "the cache should hold the PVH vmlinux"
    assert again.bzimage.read_bytes()[0x202:0x206] == b"HdrS"
    listing = subprocess.run(["cpio", "-it", "--quiet"], input=gzip.decompress(again.initrd.read_bytes()),
                             capture_output=True, check=True).stdout.decode().split()
    assert {"init", "bin/busybox", "lib/modules/hotluks/virtio_blk.ko", "lib/modules/hotluks/sd_mod.ko"} <= set(listing)
    assert not [p for p in again.kernel.parent.parent.iterdir() if p.name.startswith(".") and p.name != ".lock"]


@pytest.mark.slow
def test_cold_build_into_an_empty_cache(tmp_path: Path) -> None:
    start = time.monotonic()
    built = build_guest(cache=tmp_path)
    print(f"cold build: {time.monotonic() - start:.2f}s")
    assert built.kernel.parent == tmp_path / built.kernel_version
    assert built.kernel.name == "vmlinux" and built.initrd.stat().st_size > 500_000
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", built.kernel_version, "kernel-package"]
    assert "virtio_scsi.ko" in built.modules and built.modules.index("virtio.ko") < built.modules.index("virtio_blk.ko")


def test_agent_round_trip(guest: BootedGuest) -> None:
    print(f"boot to agent-ready: {guest.boot_seconds:.2f}s")
    assert guest.boot_seconds < 60
    agent = guest.agent
    assert agent.command("ping").lines == ("pong",)
    assert agent.block_devices() == []  # nothing attached at boot
    log = "\n".join(agent.dmesg(400))
    assert "Run /init as init process" in log
    assert "virtio_scsi" in log.lower() or "Virtio SCSI HBA" in log
    with pytest.raises(GuestAgentError) as info:
        agent.sha256("vdz")
    assert info.value.status == 2 and "no such block device" in str(info.value)
    with pytest.raises(GuestAgentError, match="no such block device"):
        agent.write("vdz", 0, b"payload line must be consumed, not run")
    assert agent.command("ping").lines == ("pong",)  # still in step after the rejected payload
    assert "Kernel panic" not in guest.console_text()


def test_two_qmp_sockets_can_be_held_at_once(guest: BootedGuest) -> None:
    async def main() -> None:
        first = await QMPBackend(guest.qmp_paths[0]).connect()
        second = await QMPBackend(guest.qmp_paths[1]).connect()
        try:
            for backend in (first, second):
                assert (await backend.execute("query-status"))["status"] == "running"
        finally:
            await first.close()
            await second.close()

    asyncio.run(main())


def test_stop_ends_qemu_by_pid_and_cleans_up(guest_artifacts: GuestArtifacts) -> None:
    booted = boot_guest(guest_artifacts)
    pid, workdir = booted.qemu.pid, booted.workdir
    assert booted.agent.command("ping").ok
    booted.stop()
    assert booted.qemu.popen is not None and booted.qemu.popen.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not workdir.exists()


def test_a_guest_that_cannot_boot_is_a_typed_error(guest_artifacts: GuestArtifacts, tmp_path: Path) -> None:
    bogus = tmp_path / "initrd"
    bogus.write_bytes(gzip.compress(b"not a cpio archive" * 100))
    broken = dataclasses.replace(guest_artifacts, initrd=bogus)
    start = time.monotonic()
    with pytest.raises(GuestBootError, match="did not become ready") as info:
        boot_guest(broken, ready_timeout=40)
    assert time.monotonic() - start < 45
    assert "panic" in str(info.value).lower()


def _backports_kernel_package() -> str | None:
    policy = subprocess.run(["apt-cache", "policy", "linux-image-amd64"], capture_output=True, text=True).stdout
    versions = []
    for line in policy.splitlines():
        words = [w for w in line.split() if w != "***"]
        if words and words[0][:1].isdigit() and "bpo" in words[0]:
            versions.append(words[0])
    if not versions:
        return None
    depends = subprocess.run(["apt-cache", "depends", f"linux-image-amd64={versions[0]}"],
                             capture_output=True, text=True).stdout
    from hotluks.demo.guest.build import versioned_kernel_package

    return versioned_kernel_package(depends)


@pytest.mark.slow
def test_backports_kernel_with_compressed_modules_boots(tmp_path: Path) -> None:
    """bookworm-backports ships a newer kernel whose modules are .ko.xz: build and boot it too."""
    package = _backports_kernel_package()
    if package is None:
        pytest.skip("apt lists no bookworm-backports kernel (scripts/setup-system.sh enables backports)")
    built = build_guest(cache=tmp_path, kernel_package=package)
    assert built.kernel_version == package.removeprefix("linux-image-")
    with boot_guest(built) as booted:
        print(f"{built.kernel_version}: boot to agent-ready {booted.boot_seconds:.2f}s")
        assert booted.agent.command("ping").ok
        assert any("Virtio SCSI HBA" in line for line in booted.agent.dmesg(400))
