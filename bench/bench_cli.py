"""CLI start-up: `hotluks plan` against the bare interpreter and `qemu-img --version`.

    .venv/bin/python bench/bench_cli.py [--reps 30] [--python VENV/bin/python | --wheel]

``--python`` measures another interpreter, e.g. a venv where the built wheel is installed:
the project's editable .venv pays an import hook in `site` that makes the floor slower.
``--wheel`` does that itself: it builds the wheel (``pip wheel . --no-deps``), installs it
in a new venv in a temporary directory (dependencies from pip's usual index), runs every
command from that directory (not the checkout) and removes it afterwards. Where the
interpreter has a ``hotluks`` console script beside it (an installed wheel), the commands
are also run through it, as operators do.

The commands run interleaved (one of each per round), so a busy machine slows them
alike; the ratio to `python -c pass` is the median of the per-round ratios.

Two reference rows show what hotluks cannot go below while it validates with lxml, as the
design requires: ``import lxml.etree`` alone, and the dependency floor of ``plan`` (import
argparse and lxml, compile the shipped RelaxNG grammar, parse and validate EXAMPLE with the
same hardened parser options, and nothing of hotluks). ``plan`` over that floor is hotluks'
own share.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
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


def wheel_venv(where: Path) -> str:
    """Build the wheel, install it into a new venv under ``where``; return the venv's python."""
    dist = where / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(ROOT)], check=True)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    subprocess.run([py, "-m", "pip", "install", "-q", *map(str, dist.glob("*.whl"))], check=True, env=ENV)
    return py


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=30)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--python", default=sys.executable, help="interpreter with hotluks installed")
    group.add_argument("--wheel", action="store_true", help="build the wheel and measure it in a fresh venv")
    args = parser.parse_args()
    if args.wheel:
        where = Path(tempfile.mkdtemp(prefix="hotluks-bench-"))
        try:
            os.chdir(where)
            measure(wheel_venv(where), args.reps, compile_checkout=False)
        finally:
            os.chdir(ROOT)
            shutil.rmtree(where, ignore_errors=True)
    else:
        measure(args.python, args.reps, compile_checkout=True)


# What `plan` must do whatever hotluks does: argparse, lxml, the grammar, one validated parse.
DEPENDENCY_FLOOR = """\
import argparse, os, sys
from lxml import etree
options = dict(resolve_entities=False, no_network=True, load_dtd=False, remove_comments=True, remove_pis=True)
with open(sys.argv[1], "rb") as fh:
    grammar = etree.RelaxNG(etree.parse(fh, etree.XMLParser(**options)))
with open(sys.argv[2], "rb") as fh:
    grammar.assertValid(etree.parse(fh, etree.XMLParser(**options)))
"""
FLOOR = "python -c pass (interpreter floor)"
LXML_FLOOR = "lxml + RelaxNG check of EXAMPLE (dependency floor)"


def measure(py: str, reps: int, compile_checkout: bool) -> None:
    script = Path(py).parent / "hotluks"
    package = subprocess.run([py, "-c", "import hotluks, os; print(os.path.dirname(hotluks.__file__))"],
                             capture_output=True, text=True, check=True, env=ENV).stdout.strip()
    commands = {
        FLOOR: [py, "-c", "pass"],
        "python -c 'import lxml.etree' (reference)": [py, "-c", "import lxml.etree"],
        LXML_FLOOR: [py, "-c", DEPENDENCY_FLOOR, os.path.join(package, "schema", "disk.rng"), str(EXAMPLE)],
        "qemu-img --version": ["qemu-img", "--version"],
        "hotluks --help": [py, "-m", "hotluks", "--help"],
        "hotluks plan EXAMPLE": [py, "-m", "hotluks", "plan", str(EXAMPLE)],
        "hotluks plan --json EXAMPLE": [py, "-m", "hotluks", "plan", "--json", str(EXAMPLE)],
        "hotluks cold-cmdline EXAMPLE": [py, "-m", "hotluks", "cold-cmdline", str(EXAMPLE), "--secret",
                                         "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f=/run/key"],
    }
    if script.exists() and "site-packages" in subprocess.run(
            [py, "-c", "import hotluks; print(hotluks.__file__)"], capture_output=True, text=True, env=ENV).stdout:
        commands["hotluks plan EXAMPLE (console script)"] = [str(script), "plan", str(EXAMPLE)]
        commands["hotluks cold-cmdline EXAMPLE (console script)"] = [
            str(script), *commands["hotluks cold-cmdline EXAMPLE"][3:]]
    if compile_checkout:  # pip byte-compiles what it installs; the checkout is compiled here
        subprocess.run([py, "-m", "compileall", "-q", str(ROOT / "hotluks")], check=True, env=ENV)
    for argv in commands.values():  # warm-up: bytecode of anything not compiled yet, page cache
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    samples: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(reps):
        for name, argv in commands.items():
            samples[name].append(once_ms(argv))
    print(f"CLI start-up of {py} (median of {reps} interleaved rounds)")
    for name, times in samples.items():
        print(f"  {name:<52} {statistics.median(times):7.1f} ms   x{ratio(samples, name, FLOOR):4.2f} "
              "of the interpreter floor")
    dependency = ratio(samples, LXML_FLOOR, FLOOR)
    for name in ("hotluks plan EXAMPLE", "hotluks plan EXAMPLE (console script)"):
        if name in samples:
            plan_ratio = ratio(samples, name, FLOOR)
            print(f"  {name}: x{plan_ratio:.2f} of the floor (goal ≤ x{GOAL_RATIO:g}: "
                  f"{'met' if plan_ratio <= GOAL_RATIO else 'MISSED'}); "
                  f"x{ratio(samples, name, LXML_FLOOR):.2f} of the dependency floor, itself x{dependency:.2f}")
    own = statistics.median(p - d for p, d in zip(samples["hotluks plan EXAMPLE"], samples[LXML_FLOOR]))
    print(f"  hotluks' own share of plan (plan - dependency floor, per round): {own:.1f} ms")


def ratio(samples: dict[str, list[float]], name: str, base: str) -> float:
    """Median of the per-round ratios of ``name`` to ``base``."""
    return statistics.median(t / f for t, f in zip(samples[name], samples[base]))


if __name__ == "__main__":
    main()
