"""Every <disk> with <encryption> in libvirt's own test data parses (libvirt's negative cases: a clean refusal)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from lxml import etree

from hotluks.errors import UnsupportedError, XMLError
from hotluks.model import Disk
from hotluks.plan.planner import build_plan

_spec = importlib.util.spec_from_file_location("libvirt_testdata", Path(__file__).with_name("libvirt_testdata.py"))
assert _spec is not None and _spec.loader is not None
testdata = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(testdata)


@pytest.fixture(scope="module")
def tests_dir() -> Path:
    try:
        return testdata.testdata_dir()  # type: ignore[no-any-return]
    except testdata.Unavailable as exc:
        pytest.skip(f"libvirt's source package is not available: {exc}")


def encrypted_disks(tests: Path) -> list[tuple[str, bytes]]:
    out = []
    for path in sorted((tests / "qemuxmlconfdata").glob("*.xml")):
        try:
            tree = etree.parse(str(path), etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError:
            continue  # libvirt's deliberately broken documents
        for i, disk in enumerate(tree.iter("disk")):
            if disk.find(".//encryption") is not None:
                out.append((f"{path.name}#{i}", etree.tostring(disk)))
    return out


def test_every_encrypted_libvirt_disk_parses(tests_dir: Path) -> None:
    disks = encrypted_disks(tests_dir)
    negative = testdata.parse_error_cases(tests_dir)
    assert len(disks) >= 50 and "luks-disks-source-both" in negative
    parsed, refused, planned, not_plannable = 0, [], 0, []
    for name, xml in disks:
        case = name.split("#")[0].removesuffix(".xml").removesuffix(".x86_64-latest")
        try:
            disk = Disk.from_xml(xml)
        except XMLError as exc:
            assert case in negative, f"{name}: {exc}\n{xml.decode()}"
            refused.append(case)
            continue
        parsed += 1
        try:
            build_plan(disk)
            planned += 1
        except UnsupportedError as exc:  # volumes, https, slices: parsed, refused by the planner with the reason
            assert "line" in str(exc)
            not_plannable.append(case)
    assert parsed >= len(disks) - 2 and set(refused) <= negative
    # what hotluks cannot attach, and says so: <cookies> (curl), and type='volume' (a storage pool)
    assert set(not_plannable) <= {"disk-network-source-curl-nbdkit", "disk-network-source-curl", "disk-slices",
                                  "luks-disks-source", "luks-disks-source-qcow2"}, not_plannable
    assert planned >= 35, (planned, not_plannable)
