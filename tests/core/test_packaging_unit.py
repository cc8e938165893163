"""Packaging facts checked without building: examples, schemas, LICENSE, floors, man page and completions."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from hotluks.cli.docgen import bash_completion, manpage, zsh_completion
from hotluks.cli.example import example_names
from hotluks.errors import LuksUnsupportedError
from hotluks.luks.kdf import argon2

REPO = Path(__file__).resolve().parents[2]


def test_floors_are_what_debian_12_ships() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    deps = set(project["project"]["dependencies"])
    assert {"lxml>=4.9.2", "cryptography>=38.0.4", "numpy>=1.24.2"} <= deps
    assert project["build-system"]["requires"][0] == "setuptools>=66.1"
    assert "MIT License" in (REPO / "LICENSE").read_text()


def test_argon2_without_support_is_a_clean_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.kdf.argon2", None)
    with pytest.raises(LuksUnsupportedError, match="cryptography' package >= 44"):
        argon2("argon2id", b"pw", b"s" * 32, time=1, memory_kib=64, cpus=1, length=32)


def test_examples_ship_in_the_package(cli: Any) -> None:
    names = example_names()
    assert "qemu-doc-detached-qcow2" in names and len(names) == 13
    shown = cli("example", "qemu-doc-detached-qcow2")
    assert shown.code == 0 and shown.out.lstrip().startswith(("<disk", "<!--"))
    listed = cli("example", "--list")
    assert listed.out.split() == names
    missing = cli("example", "nope")
    assert missing.code == 2 and "qemu-doc-detached-qcow2" in missing.err


def test_generated_manpage_and_completions_cover_every_command() -> None:
    page = manpage()
    for command in ("attach", "detach", "status", "repair", "plan", "cold-cmdline", "luks dump", "example"):
        assert f'.SS "{command.replace("-", chr(92) + "-")}"' in page, command
    assert ".SH EXIT STATUS" in page and "\\-\\-timeout" in page
    bash, zsh = bash_completion(), zsh_completion()
    assert "complete -o filenames -F _hotluks hotluks" in bash and '"luks dump")' in bash
    assert zsh.startswith("#compdef hotluks") and "local path" not in zsh


def test_every_subcommand_has_a_description_and_shows_defaults(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from hotluks.cli.main import build_parser, subparsers

    for name, sub, _help in subparsers(build_parser()):
        assert sub.description, name
    with pytest.raises(SystemExit):
        cli("attach", "--help")
    out = " ".join(capsys.readouterr().out.split())
    assert "(default: 30.0)" in out or "default 30" in out
    assert "(default: qemu:///system)" in out or "default qemu:///system" in out
    with pytest.raises(SystemExit):
        cli("luks", "format", "--help")
    assert "(default: luks2)" in capsys.readouterr().out  # an option without help text shows its default too


def test_verbose_after_the_subcommand(cli: Any, example: Path) -> None:
    assert cli("plan", str(example), "-v").code == 0
    assert cli("-v", "plan", str(example)).code == 0


def test_version_names_the_tools(cli: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli("--version")
    out = capsys.readouterr().out
    assert out.startswith("hotluks ") and "QEMU" in out and "libvirt" in out and "cryptsetup" in out
