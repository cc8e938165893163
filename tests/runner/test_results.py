"""Typed results: the documented JSON schema (hotluks.runner.results' docstring) is what to_json()
produces, every key is snake_case, and json.dumps works on the results themselves."""

from __future__ import annotations

import json
import re
from typing import Any

from hotluks.runner import results
from hotluks.runner.results import AttachResult, DetachResult, RepairAction, StatusEntry, StatusItem, StepReport

SAMPLES: dict[str, Any] = {
    "AttachResult": AttachResult("vm", "vdb", "hl-vdb", "hl-vdb-luks", "attached-luks", "ok", True,
                                 (StepReport("object-add", "hl-vdb-key", 0.001),), ({"execute": "x"},),
                                 header_fingerprint="ab" * 32),
    "DetachResult": DetachResult("vm", "vdb", "hl-vdb", ("device_del hl-vdb",), 0.5),
    "StatusEntry": StatusEntry("vdb", "hl-vdb", "attached-luks", "attached", True, False, None,
                               (StatusItem("device", "hl-vdb", True),)),
    "RepairAction": RepairAction("vdb", "finished detach", ("device_del hl-vdb",)),
}


def _documented() -> dict[str, list[str]]:
    doc = results.__doc__ or ""
    out = {}
    for name, body in re.findall(r"- ``(\w+)``: (.*?)(?=\n- ``|\n\n)", doc, re.S):
        body = re.sub(r"\([^)]*\)", "", re.sub(r"\[[^]]*\]", "", body))
        out[name] = [w.strip(" .\n") for w in re.split(r",|\band\b", body) if w.strip(" .\n")]
    return out


def test_documented_schema_matches_to_json() -> None:
    documented = _documented()
    assert set(documented) == set(SAMPLES)
    for name, sample in SAMPLES.items():
        doc = sample.to_json()
        assert [k for k in documented[name]] == [k for k in doc if k in documented[name]], name
        assert set(doc) == set(documented[name]), name
        assert all(re.fullmatch(r"[a-z]+(_[a-z]+)*", key) for key in doc), name


def test_results_are_json_and_mappings() -> None:
    for sample in SAMPLES.values():
        assert json.loads(json.dumps(sample)) == json.loads(json.dumps(sample.to_json()))
        assert dict(sample) == json.loads(json.dumps(sample.to_json()))
    assert SAMPLES["StatusEntry"]["items"][0]["present"] and SAMPLES["StatusEntry"].components[0].present
    assert SAMPLES["AttachResult"]["top_node"] == "hl-vdb-luks"
