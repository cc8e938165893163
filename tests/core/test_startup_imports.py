"""The pure commands stay light: what `plan` and `cold-cmdline` import beyond argparse and lxml.

lxml's own import is most of their start-up (BENCHMARKS.md, *CLI start-up*); this keeps the
rest from growing back: no runner, LUKS engine, backends, asyncio, logging or crypto on these
paths. Each case runs in a fresh interpreter and counts only what the command itself loads.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "hotluks" / "examples" / "qemu-doc-detached-qcow2.xml"
HEAVY = ("logging", "json", "asyncio", "qemu", "cryptography", "numpy", "libvirt", "pathlib", "zipfile",
         "importlib.resources", "shutil", "subprocess", "tempfile", "threading", "socket", "ssl", "hashlib",
         "base64", "hotluks.runner", "hotluks.luks", "hotluks.backends", "hotluks.api", "hotluks.log")
PROBE = """
import contextlib, io, sys
before = set(sys.modules)
from hotluks.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(sys.argv[2:])
print(repr((code, sorted(m for m in sys.modules if m not in before))), file=sys.stderr)
"""


def loaded_by(*argv: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOTLUKS_")}  # e.g. the suite's JSON check
    proc = subprocess.run([sys.executable, "-c", PROBE, "-", *argv], capture_output=True, text=True, timeout=60,
                          env=env)
    code, loaded = ast.literal_eval(proc.stderr.strip().splitlines()[-1])
    assert code == 0, proc.stderr
    return set(loaded)


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@pytest.mark.parametrize("argv, allowed", [
    (("plan", str(EXAMPLE)), ()),
    (("example", "qemu-doc-detached-qcow2"), ()),
    (("plan", "--json", str(EXAMPLE)), ("json",)),
    (("cold-cmdline", str(EXAMPLE), "--secret", f"0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f={EXAMPLE}"), ("json",)),
])
def test_pure_commands_load_nothing_heavy(argv: tuple[str, ...], allowed: tuple[str, ...]) -> None:
    modules = loaded_by(*argv)
    assert "hotluks.plan.planner" in modules or argv[0] == "example"  # the probe saw the command run
    assert sorted(m for m in modules if within(m, HEAVY) and not within(m, allowed)) == []
