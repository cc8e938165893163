"""The built wheel works in a fresh venv (examples, plan, man page, completions) and the sdist is complete."""

from __future__ import annotations

import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    return completed(*argv, cwd=cwd, input=input).stdout


def completed(*argv: str | Path, cwd: Path | None = None, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, input=input, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
    return proc


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built as pip builds it (isolated, with the newest setuptools)."""
    out = tmp_path_factory.mktemp("dist")
    build = completed(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", out, REPO)
    # setuptools announces removals (e.g. pyproject's licence table after 2027-02-18) this way
    assert b"deprecat" not in build.stderr.lower(), build.stderr.decode(errors="replace")
    return out


def test_wheel_declares_the_licence(dist: Path) -> None:
    wheel = next(dist.glob("hotluks-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        names = whl.namelist()
        metadata = whl.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "License-Expression: MIT" in metadata.splitlines() or "License: MIT" in metadata.splitlines()
    assert any(n.endswith("/LICENSE") and ".dist-info/" in n for n in names)


def test_wheel_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    wheel = next(dist.glob("hotluks-*.whl"))
    env = tmp_path / "venv"
    venv.create(env, with_pip=True)
    run(env / "bin" / "pip", "install", "-q", wheel)
    hotluks = env / "bin" / "hotluks"
    xml = run(hotluks, "example", "qemu-doc-detached-qcow2")
    plan = run(hotluks, "plan", "-", input=xml).decode()
    assert "Plan for vdb" in plan and "luks" in plan
    assert b"qemu-doc-detached-qcow2" in run(hotluks, "example", "--list")
    man = env / "share" / "man" / "man1" / "hotluks.1"
    assert man.read_text().startswith(".TH HOTLUKS 1")
    assert "complete -o filenames -F _hotluks hotluks" in (
        env / "share" / "bash-completion" / "completions" / "hotluks").read_text()
    assert (env / "share" / "zsh" / "site-functions" / "_hotluks").read_text().startswith("#compdef hotluks")
    assert run(hotluks, "--version").decode().startswith("hotluks ")


def test_sdist_has_examples_tests_and_scripts(tmp_path: Path) -> None:
    run(sys.executable, "setup.py", "-q", "sdist", "-d", tmp_path, cwd=REPO)
    sdist = next(tmp_path.glob("hotluks-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for wanted in ("LICENSE", "hotluks/examples/qemu-doc-detached-qcow2.xml", "hotluks/schemas/plan.json",
                   "tests/core/test_hostile.py", "scripts/setup-system.sh", "xml/disk.rng", "setup.py"):
        assert wanted in names, wanted
