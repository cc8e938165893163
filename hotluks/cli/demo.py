"""``hotluks demo``: the first-run experience (see :mod:`hotluks.demo`)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from hotluks.cli.output import emit

if TYPE_CHECKING:
    from hotluks.demo import DemoStep


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="attach a detached-header LUKS disk to a throwaway VM and prove the guest "
                                    "reads the plaintext",
                       description="In a temporary directory: create a payload and a detached LUKS1 header, "
                                   "boot a tiny Linux guest (or a guest-less VM if no kernel is available), "
                                   "attach the disk with hotluks, check what the guest reads, detach, clean "
                                   "up. Exit 0 only if every check held.")
    p.add_argument("--json", action="store_true", help="print one JSON report at the end")
    p.add_argument("--no-guest", action="store_true", help="use a guest-less VM and qemu-io instead of a guest")
    p.set_defaults(func=cmd_demo)


def _print_step(step: DemoStep) -> None:
    mark = {True: "✓", False: "✗", None: "•"}[step.ok]
    print(f" {mark} {step.title:<78} {step.seconds:7.3f} s", flush=True)
    if step.detail:
        print(f"     {step.detail}", flush=True)
    for line in step.lines:
        print(f"       {line}", flush=True)


def cmd_demo(args: argparse.Namespace) -> int:
    from hotluks.demo import run_demo

    if not args.json:
        print("hotluks demo — a LUKS disk whose header lives in another file, hot-plugged into a running VM\n",
              flush=True)
    report = run_demo(lambda s: None if args.json else _print_step(s), use_guest=not args.no_guest)
    if args.json:
        emit("demo", report.to_json())
        return 0 if report.ok else 1
    total = sum(s.seconds for s in report.steps)
    if report.error:
        print(f"\nhotluks: error: {report.error}", file=sys.stderr)
    failed = [s for s in report.checks if not s.ok]
    verdict = "all checks passed" if report.ok else f"{len(failed)} check(s) FAILED"
    print(f"\n{len(report.checks)} checks, {verdict} ({report.mode}, {total:.1f} s). Temporary files removed.")
    return 0 if report.ok else 1
