#!/usr/bin/env python3
"""Attach latency of a librbd-encrypted RBD disk: hotluks versus the same QMP hand-sent (a script).

Starts a throwaway single-node Ceph cluster (auth none, loopback), makes one image with
``rbd encryption format`` and a guest-less q35 VM, then alternates, ``--reps`` times after
one warm-up pair:

- hotluks: ``Operator.attach`` in process (Operator reused, preflight off), then detach;
- by hand: the very same commands (object-add, blockdev-add rbd with ``encrypt``,
  blockdev-add raw, device_add) sent with qemu.qmp on a second QMP socket, then undone.

It prints the medians, the median of the paired ratios (hotluks / hand) and where the time
goes (librbd's KDF inside blockdev-add dominates). Everything is stopped by PID at the end.

    .venv/bin/python bench/bench_rbd.py [--reps 5] [--format luks2|luks1]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # testsupport/ lives in the checkout

from hotluks.backends.qmp import QMPBackend
from hotluks.demo.qemu.launcher import start_qemu
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.render.qmp import bound_command
from hotluks.runner.operator import Operator
from hotluks.runner.vmstate import plan_context, snapshot
from hotluks.secrets import SecretValue
from testsupport.ceph import CephCluster, CephPortsBusyError
from testsupport.vms import vm_args

XML_FORMAT = {"luks1": "luks", "luks2": "luks2"}


def start_cluster(base: int) -> CephCluster:
    for port in (base, base + 1000, base + 2000):
        try:
            return CephCluster(base_port=port, memstore_mb=256).start()
        except CephPortsBusyError:
            continue
    raise SystemExit(f"no free Ceph port block at {base}, {base + 1000}, {base + 2000}")


async def hand_attach(client: Any, commands: list[dict[str, Any]]) -> tuple[float, float]:
    """Send the commands; (total seconds, seconds of the rbd blockdev-add)."""
    rbd = 0.0
    started = time.perf_counter()
    for cmd in commands:
        t = time.perf_counter()
        await client.execute(cmd["execute"], cmd["arguments"])
        if cmd["arguments"].get("driver") == "rbd":
            rbd = time.perf_counter() - t
    return time.perf_counter() - started, rbd


async def hand_undo(client: Any, commands: list[dict[str, Any]]) -> None:
    from qemu.qmp.events import EventListener

    device = commands[-1]["arguments"]["id"]
    listener = EventListener()
    client.register_listener(listener)
    try:
        await client.execute("device_del", {"id": device})
        async for event in listener:
            data: Any = event.get("data") or {}
            if event["event"] == "DEVICE_DELETED" and data.get("device") == device:
                break
    finally:
        client.remove_listener(listener)
    for cmd in reversed(commands[:-1]):
        if cmd["execute"] == "blockdev-add":
            await client.execute("blockdev-del", {"node-name": cmd["arguments"]["node-name"]})
        else:
            await client.execute("object-del", {"id": cmd["arguments"]["id"]})


async def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from qemu.qmp import QMPClient

    passphrase = secrets.token_hex(16).encode()
    passfile = work / "pass"
    passfile.write_bytes(passphrase)
    with start_cluster(args.base_port) as cluster:
        image = "bench-" + args.format
        cluster.create_image(image, 32)
        t = time.perf_counter()
        cluster.encryption_format(image, args.format, passfile)
        format_s = time.perf_counter() - t
        disk = Disk.from_xml(
            f"<disk type='network' device='disk'><driver name='qemu' type='raw'/>"
            f"<source protocol='rbd' name='rbd/{image}'><config file='{cluster.conf_path}'/></source>"
            f"<encryption format='{XML_FORMAT[args.format]}' engine='librbd'>"
            f"<secret type='passphrase' usage='bench'/></encryption><target dev='vdb' bus='virtio'/></disk>")
        values = {"bench": SecretValue(passphrase)}
        vm = start_qemu(vm_args(ports=4, scsi=True), memory_mb=64, qmp_sockets=2)
        try:
            backend = await QMPBackend(vm.qmp_path, timeout=120).connect()
            op = Operator(backend, state_dir=work / "state")
            plan = build_plan(disk, await op.capabilities(),
                              await plan_context(backend, disk, await snapshot(backend), machine=await op.machine()))
            commands = [bound_command(step, values, None) for step in plan.steps]
            client = QMPClient("bench-rbd")
            client.logger.disabled = True
            await client.connect(str(vm.extra_sockets[0]))
            runner_t, hand_t, rbd_t, step_rbd_t = [], [], [], []
            for i in range(args.reps + 1):
                t = time.perf_counter()
                result = await op.attach(disk, values, preflight=False)
                took = time.perf_counter() - t
                await op.detach("vdb", timeout=20)
                hand, rbd = await hand_attach(client, commands)
                await hand_undo(client, commands)
                if i == 0:
                    continue  # warm-up (first librados connect, page cache)
                runner_t.append(took)
                hand_t.append(hand)
                rbd_t.append(rbd)
                step_rbd_t.append(next(s.seconds for s in result.steps if s.name.endswith("proto")))
                print(f"  rep {i}: hotluks {took:.3f}s (rbd blockdev-add {step_rbd_t[-1]:.3f}s)  "
                      f"hand {hand:.3f}s (rbd blockdev-add {rbd:.3f}s)", flush=True)
            await client.disconnect()
            await backend.close()
        finally:
            vm.stop()
    ratios = [r / h for r, h in zip(runner_t, hand_t)]
    overhead = [(r - sr) - (h - hr) for r, sr, h, hr in zip(runner_t, step_rbd_t, hand_t, rbd_t)]
    return {"format": args.format, "reps": args.reps, "format_s": format_s,
            "runner": statistics.median(runner_t), "hand": statistics.median(hand_t),
            "ratio_of_medians": statistics.median(runner_t) / statistics.median(hand_t),
            "paired": statistics.median(ratios), "min_ratio": min(ratios), "max_ratio": max(ratios),
            "kdf_runner": statistics.median(step_rbd_t), "kdf_hand": statistics.median(rbd_t),
            "overhead_ms": statistics.median(overhead) * 1000}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="measured attach pairs (default 5)")
    ap.add_argument("--format", choices=("luks1", "luks2"), default="luks2")
    ap.add_argument("--base-port", type=int, default=13800, help="Ceph port block (next blocks if busy)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hotluks-bench-rbd-") as tmp:
        r = asyncio.run(run(args, Path(tmp)))
    print(f"librbd {r['format']} attach, {r['reps']} reps (rbd encryption format took {r['format_s']:.1f}s):")
    print(f"  hotluks (Operator reused, preflight off) median {r['runner']:.3f}s; hand-sent qemu.qmp median "
          f"{r['hand']:.3f}s")
    print(f"  ratio of medians {r['ratio_of_medians']:.3f}; paired ratio median {r['paired']:.3f} "
          f"(min {r['min_ratio']:.3f}, max {r['max_ratio']:.3f}); goal ≤ 1.05")
    print(f"  rbd blockdev-add (librbd open + KDF) median: hotluks {r['kdf_runner']:.3f}s, hand {r['kdf_hand']:.3f}s;"
          f" everything else: hotluks − hand = {r['overhead_ms']:.1f} ms (median)")
    return 0 if r["paired"] <= 1.05 else 1


if __name__ == "__main__":
    sys.exit(main())
