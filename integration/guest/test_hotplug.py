"""Hot-plug a raw file disk over QMP into the live guest, on virtio-blk and virtio-scsi."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.guest.build import GuestArtifacts
from hotluks.demo.guest.disks import Bus, disk_device, raw_file_node
from hotluks.demo.guest.vm import PC_LAYOUT, Q35_LAYOUT, BootedGuest, VMLayout, boot_guest

pytestmark = [pytest.mark.guest, pytest.mark.qemu]

BOUND = 10.0  # seconds: visible in the guest / DEVICE_DELETED / gone from the guest


@pytest.fixture(scope="module", params=[PC_LAYOUT, Q35_LAYOUT], ids=lambda layout: layout.machine)
def layout_guest(request: pytest.FixtureRequest, guest_artifacts: GuestArtifacts) -> Iterator[BootedGuest]:
    layout: VMLayout = request.param
    booted = boot_guest(guest_artifacts, layout=layout, qmp_sockets=2)
    try:
        yield booted
    finally:
        booted.stop()


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_hotplug_read_write_unplug(layout_guest: BootedGuest, bus: Bus, tmp_path: Path) -> None:
    image = tmp_path / "disk.raw"
    content = os.urandom(4 << 20)
    image.write_bytes(content)
    tag = f"{layout_guest.layout.machine}{bus}"
    node, dev_id, serial = f"n-{tag}", f"d-{tag}", f"hl{tag}"

    async def main() -> dict[str, float]:
        timings: dict[str, float] = {}
        qmp = await QMPBackend(layout_guest.qmp_paths[1]).connect()
        try:
            async with layout_guest.async_agent() as agent:
                await qmp.execute("blockdev-add", raw_file_node(node, image))
                start = time.monotonic()
                await qmp.execute("device_add", disk_device(layout_guest.layout, bus, dev_id, node, serial=serial))
                dev = await agent.wait_for_device(serial, timeout=BOUND)
                timings["plug->visible"] = time.monotonic() - start
                assert dev.size == len(content) and not dev.readonly
                if bus == "scsi":
                    assert dev.scsi_address is not None and dev.name.startswith("sd")
                else:
                    assert dev.name.startswith("vd")

                assert await agent.sha256(dev.name) == hashlib.sha256(content).hexdigest()
                assert await agent.sha256(dev.name, 4096) == hashlib.sha256(content[:4096]).hexdigest()

                # the guest writes (unaligned, several agent chunks); the host reads the file
                payload = os.urandom(40_000)
                start = time.monotonic()
                await agent.write(dev.name, 123_457, payload)
                timings["guest write 40000 B"] = time.monotonic() - start
                assert image.read_bytes()[123_457:123_457 + len(payload)] == payload

                # the host writes the file; the guest reads it past its buffer cache
                fresh = os.urandom(512)
                with open(image, "r+b") as f:
                    f.seek(1_000_000)
                    f.write(fresh)
                assert await agent.read(dev.name, 1_000_000, 512) == fresh

                with qmp.events(["DEVICE_DELETED"]) as events:
                    start = time.monotonic()
                    await qmp.execute("device_del", {"id": dev_id})
                    while True:
                        remaining = BOUND - (time.monotonic() - start)
                        event = await events.get(max(remaining, 0.01))
                        if event["data"].get("device") == dev_id:
                            break
                    timings["device_del->DEVICE_DELETED"] = time.monotonic() - start
                await agent.wait_device_gone(serial, timeout=BOUND)
                timings["device_del->gone in guest"] = time.monotonic() - start
                await qmp.execute("blockdev-del", {"node-name": node})
                nodes = await qmp.execute("query-named-block-nodes")
                assert node not in {n["node-name"] for n in nodes}
                assert await agent.block_devices() == []
        finally:
            await qmp.close()
        return timings

    timings = asyncio.run(main())
    print(f"{layout_guest.layout.machine}/{bus}: " + ", ".join(f"{k} {v:.3f}s" for k, v in timings.items()))
    assert timings["plug->visible"] < BOUND
    assert timings["device_del->DEVICE_DELETED"] < BOUND


def test_agent_shares_a_chatty_console(guest_artifacts: GuestArtifacts, tmp_path: Path) -> None:
    """One serial port for kernel console and agent, kernel at loglevel 8: replies still parse."""
    image = tmp_path / "disk.raw"
    content = os.urandom(1 << 20)
    image.write_bytes(content)

    async def main(booted: BootedGuest) -> list[str]:
        qmp = await QMPBackend(booted.qmp_paths[0]).connect()
        try:
            async with booted.async_agent() as agent:
                await qmp.execute("blockdev-add", raw_file_node("noisy", image))
                await qmp.execute("device_add", disk_device(booted.layout, "virtio", "dnoisy", "noisy", serial="hlnoisy"))
                dev = await agent.wait_for_device("hlnoisy", timeout=BOUND)
                assert await agent.sha256(dev.name) == hashlib.sha256(content).hexdigest()
                with qmp.events(["DEVICE_DELETED"]) as events:
                    await qmp.execute("device_del", {"id": "dnoisy"})
                    while (await events.get(BOUND))["data"].get("device") != "dnoisy":
                        pass
                await agent.wait_device_gone("hlnoisy", timeout=BOUND)
                return list(agent.transcript)
        finally:
            await qmp.close()

    with boot_guest(guest_artifacts, shared_console=True, cmdline_extra="loglevel=8 hotluks.printk=8") as booted:
        assert booted.console_text() == ""
        transcript = asyncio.run(main(booted))
    noise = [line for line in transcript if " < " in line and "@@HL" not in line and line.split(" < ", 1)[1].strip()]
    assert any("virtio_blk" in line or "vda" in line for line in noise), "expected kernel messages on the shared port"
