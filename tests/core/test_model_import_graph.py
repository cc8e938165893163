"""``Disk.from_xml`` without an import cycle: the parser side never imports :mod:`hotluks.model`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import hotluks
from hotluks.model import Disk

PARSER_SIDE = ("disktypes", "xmlparse", "xmlbuild", "xmlextras")
PACKAGE = Path(hotluks.__file__).parent


def _imported(module: str) -> set[str]:
    """Every module ``hotluks/<module>.py`` imports, at any level (function bodies included)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_parser_side_never_imports_the_model() -> None:
    for module in PARSER_SIDE:
        assert "hotluks.model" not in _imported(module), module
    code = ("import sys, hotluks.xmlparse, hotluks.xmlbuild, hotluks.xmlextras, hotluks.disktypes; "
            "sys.exit('hotluks.model' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_from_xml_builds_the_public_class(tmp_path: Path) -> None:
    xml = ("<disk type='file'><driver name='qemu' type='raw'/><source file='/x.img'/>"
           "<target dev='vdc' bus='virtio'/></disk>")
    disk = Disk.from_xml(xml)
    (tmp_path / "d.xml").write_text(xml)
    assert type(disk) is Disk and disk == Disk.from_xml(tmp_path / "d.xml") == Disk.from_xml(bytearray(xml.encode()))
    assert hotluks.Disk is Disk
