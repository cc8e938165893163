"""CLI start-up: `hotluks plan` against the bare interpreter and `qemu-img --version`.

    .venv/bin/python bench/bench_cli.py [--reps 30] [--python VENV/bin/python]

``--python`` measures another interpreter, e.g. a venv where the built wheel is installed:
the project's editable .venv pays an import hook in `site` that makes the floor slower.

The commands run interleaved (one of each per round), so a busy machine slows them
alike; the ratio to `python -c pass` is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "hotluks" / "examples" / "qemu-doc-detached-qcow2.xml"
GOAL_RATIO = 3.0


# As installed (pip byte-compiles a wheel): bytecode is used, so PYTHONDONTWRITEBYTECODE is dropped
# and the package is compiled once before measuring.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def once_ms(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    parser.add_argument("--python", default=sys.executable, help="interpreter with hotluks installed")
    args = parser.parse_args()
    py = args.python
    commands = {
        "python -c pass (interpreter floor)": [py, "-c", "pass"],
        "qemu-img --version": ["qemu-img", "--version"],
        "hotluks --help": [py, "-m", "hotluks", "--help"],
        "hotluks plan EXAMPLE": [py, "-m", "hotluks", "plan", str(EXAMPLE)],
        "hotluks plan --json EXAMPLE": [py, "-m", "hotluks", "plan", "--json", str(EXAMPLE)],
        "hotluks cold-cmdline EXAMPLE": [py, "-m", "hotluks", "cold-cmdline", str(EXAMPLE), "--secret",
                                         "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f=/run/key"],
    }
    subprocess.run([py, "-m", "compileall", "-q", str(ROOT / "hotluks")], check=True, env=ENV)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.reps):
        for name, argv in commands.items():
            samples[name].append(once_ms(argv))
    floor_name = "python -c pass (interpreter floor)"
    print(f"CLI start-up (median of {args.reps} interleaved rounds)")
    for name, times in samples.items():
        ratio = statistics.median(t / f for t, f in zip(times, samples[floor_name]))
        print(f"  {name:<38} {statistics.median(times):7.1f} ms   x{ratio:4.2f} of the interpreter floor")
    plan_ratio = statistics.median(t / f for t, f in zip(samples["hotluks plan EXAMPLE"], samples[floor_name]))
    print(f"  hotluks plan: x{plan_ratio:.2f} of the floor (goal ≤ x{GOAL_RATIO:g}: "
          f"{'met' if plan_ratio <= GOAL_RATIO else 'MISSED'})")

if __name__ == "__main__":
    main()
