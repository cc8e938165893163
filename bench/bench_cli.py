"""CLI start-up: `hotluks plan` against the bare interpreter and `qemu-img --version`, one run.

    .venv/bin/python bench/bench_cli.py [--reps 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "xml" / "examples" / "qemu-doc-detached-qcow2.xml"


def median_ms(argv: list[str], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    py = sys.executable
    rows = {
        "python -c pass (interpreter floor)": median_ms([py, "-c", "pass"], args.reps),
        "qemu-img --version": median_ms(["qemu-img", "--version"], args.reps),
        "hotluks --help": median_ms([py, "-m", "hotluks", "--help"], args.reps),
        "hotluks plan EXAMPLE": median_ms([py, "-m", "hotluks", "plan", str(EXAMPLE)], args.reps),
        "hotluks plan --json EXAMPLE": median_ms([py, "-m", "hotluks", "plan", "--json", str(EXAMPLE)], args.reps),
        "hotluks cold-cmdline EXAMPLE": median_ms(
            [py, "-m", "hotluks", "cold-cmdline", str(EXAMPLE), "--secret",
             "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f=/run/key"], args.reps),
    }
    floor = rows["python -c pass (interpreter floor)"]
    print(f"CLI start-up (median of {args.reps} runs)")
    for name, ms in rows.items():
        print(f"  {name:<38} {ms:7.1f} ms   x{ms / floor:4.2f} of the interpreter floor")
    plan = rows["hotluks plan EXAMPLE"]
    print(f"  hotluks plan: {plan:.1f} ms (goal well under 200 ms: {'met' if plan < 200 else 'MISSED'})")


if __name__ == "__main__":
    main()
