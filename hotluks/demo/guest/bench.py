"""Measure the tiny guest: build (cold/cached), boot to agent-ready, hot-plug and unplug.

``python -m hotluks.demo.guest.bench [--cold] [--layout pc|q35]`` prints one JSON object
of seconds. ``--cold`` builds into a fresh temporary cache first (downloads the kernel).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from hotluks.demo.guest.disks import Bus, disk_device, raw_file_node
from hotluks.demo.guest.vm import PC_LAYOUT, Q35_LAYOUT, BootedGuest


async def _plug_cycle(guest: BootedGuest, image: Path, bus: Bus) -> dict[str, float]:
    from hotluks.backends.qmp import QMPBackend

    out: dict[str, float] = {}
    node, dev_id, serial = f"bench-{bus}", f"bench-d-{bus}", f"bench{bus}"
    qmp = await QMPBackend(guest.qemu.qmp_path).connect()
    try:
        async with guest.async_agent() as agent:
            await qmp.execute("blockdev-add", raw_file_node(node, image))
            start = time.monotonic()
            await qmp.execute("device_add", disk_device(guest.layout, bus, dev_id, node, serial=serial))
            dev = await agent.wait_for_device(serial, timeout=30)
            out[f"{bus}: device_add -> visible in guest"] = time.monotonic() - start
            start = time.monotonic()
            await agent.sha256(dev.name)
            out[f"{bus}: guest sha256 of {image.stat().st_size >> 20} MiB"] = time.monotonic() - start
            with qmp.events(["DEVICE_DELETED"]) as events:
                start = time.monotonic()
                await qmp.execute("device_del", {"id": dev_id})
                while (await events.get(30))["data"].get("device") != dev_id:
                    pass
                out[f"{bus}: device_del -> DEVICE_DELETED"] = time.monotonic() - start
            await agent.wait_device_gone(serial, timeout=30)
            out[f"{bus}: device_del -> gone from guest"] = time.monotonic() - start
            await qmp.execute("blockdev-del", {"node-name": node})
    finally:
        await qmp.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from hotluks.demo.guest.build import build_guest
    from hotluks.demo.guest.vm import boot_guest

    parser = argparse.ArgumentParser(prog="python -m hotluks.demo.guest.bench", description=__doc__)
    parser.add_argument("--cold", action="store_true", help="also time a build into an empty cache")
    parser.add_argument("--layout", choices=("pc", "q35"), default="pc")
    args = parser.parse_args(argv)
    results: dict[str, float | str] = {}
    if args.cold:
        scratch = Path(tempfile.mkdtemp(prefix="hotluks-bench-cache-"))
        try:
            start = time.monotonic()
            build_guest(cache=scratch)
            results["build (cold, empty cache)"] = time.monotonic() - start
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    start = time.monotonic()
    artifacts = build_guest()
    results["build (cached)"] = time.monotonic() - start
    results["kernel"] = f"{artifacts.kernel_version} ({artifacts.kernel.name})"
    workdir = Path(tempfile.mkdtemp(prefix="hotluks-bench-"))
    try:
        image = workdir / "disk.raw"
        image.write_bytes(os.urandom(8 << 20))
        with boot_guest(artifacts, layout=PC_LAYOUT if args.layout == "pc" else Q35_LAYOUT) as guest:
            results["boot -> agent ready"] = guest.boot_seconds
            buses: tuple[Bus, ...] = ("virtio", "scsi")
            for bus in buses:
                results.update(asyncio.run(_plug_cycle(guest, image, bus)))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in results.items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
