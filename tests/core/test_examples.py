"""Every shipped example parses, plans, and matches its golden plan; the QEMU doc layout exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.render.qmp import plan_json

UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def test_there_are_thirteen_examples(golden_dir: Path) -> None:
    examples = sorted(p.stem for p in (golden_dir.parents[2] / "xml" / "examples").glob("*.xml"))
    assert len(examples) == 13
    # one golden file per example, and no stale ones
    assert sorted(p.stem for p in golden_dir.glob("*.json")) == examples


def test_example_matches_golden_plan(example: Path, golden_dir: Path) -> None:
    """Pin each example's plan; HOTLUKS_UPDATE_GOLDEN=1 rewrites the golden files."""
    doc = plan_json(build_plan(Disk.from_xml(example)))
    golden = golden_dir / f"{example.stem}.json"
    text = json.dumps(doc, indent=2, sort_keys=False) + "\n"
    if os.environ.get("HOTLUKS_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"no golden plan for {example.name}; run with HOTLUKS_UPDATE_GOLDEN=1"
    assert json.loads(golden.read_text()) == doc


def test_example_cli_json_equals_api(example: Path, cli: Any) -> None:
    result = cli("plan", str(example), "--json")
    assert result.code == 0, result.err
    doc = json.loads(result.out)
    assert (doc.pop("format"), doc.pop("command"), doc.pop("ok")) == ("hotluks/1", "plan", True)
    assert doc == plan_json(build_plan(Disk.from_xml(example)))
    listing = cli("plan", str(example))
    assert listing.code == 0 and listing.out.startswith("Plan for ")


def test_example_undo_is_exact_reverse(example: Path) -> None:
    plan = build_plan(Disk.from_xml(example))
    undo = [(s.undo_command, s.name) for s in plan.undo_order()]
    expected_cmd = {"object-add": "object-del", "blockdev-add": "blockdev-del", "device_add": "device_del"}
    assert undo == [(expected_cmd[s.command], s.name) for s in reversed(plan.steps)]
    for step in plan.steps:
        key = "node-name" if step.command == "blockdev-add" else "id"
        assert step.undo_arguments == {key: step.name}


def test_qemu_doc_example_is_exactly_seven_steps(golden_dir: Path) -> None:
    """QEMU's documented detached-header layout, argument for argument."""
    example = golden_dir.parents[2] / "xml" / "examples" / "qemu-doc-detached-qcow2.xml"
    plan = build_plan(Disk.from_xml(example))
    got = [step.qmp() for step in plan.steps]
    assert got == [
        {"execute": "object-add", "arguments": {"qom-type": "secret", "id": "hl-vdb-key"}},
        {"execute": "blockdev-add", "arguments": {"node-name": "hl-vdb-hdr-proto", "driver": "file",
                                                  "filename": "/var/lib/hotluks/header.img"}},
        {"execute": "blockdev-add", "arguments": {"node-name": "hl-vdb-hdr-fmt", "driver": "raw",
                                                  "file": "hl-vdb-hdr-proto"}},
        {"execute": "blockdev-add", "arguments": {"node-name": "hl-vdb-proto", "driver": "file",
                                                  "filename": "/var/lib/hotluks/payload.qcow2"}},
        {"execute": "blockdev-add", "arguments": {"node-name": "hl-vdb-fmt", "driver": "qcow2",
                                                  "file": "hl-vdb-proto"}},
        {"execute": "blockdev-add", "arguments": {"node-name": "hl-vdb-luks", "driver": "luks",
                                                  "file": "hl-vdb-fmt", "header": "hl-vdb-hdr-fmt",
                                                  "key-secret": "hl-vdb-key"}},
        {"execute": "device_add", "arguments": {"driver": "virtio-blk-pci", "id": "hl-vdb",
                                                "drive": "hl-vdb-luks"}},
    ]
    assert [b.ref.uuid for b in plan.secrets] == [UUID]
    assert plan.top_node == "hl-vdb-luks" and plan.device_id == "hl-vdb"


@pytest.mark.parametrize("name,shape", [
    ("attached-luks-raw", "attached-luks"),
    ("qcow2-native", "qcow2-native"),
    ("qemu-doc-detached-qcow2", "detached-header-qcow2"),
    ("detached-raw-block", "detached-header-raw"),
    ("librbd-layered", "librbd-layered"),
    ("librbd-luks", "librbd"),
    ("rbd-qemu-engine", "attached-luks"),
])
def test_example_shape(name: str, shape: str, golden_dir: Path) -> None:
    disk = Disk.from_xml(golden_dir.parents[2] / "xml" / "examples" / f"{name}.xml")
    assert disk.shape == shape
