"""The libvirt-native path's record: one ``libvirt-disk`` step, validated, undone through libvirt by target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotluks.model import Disk
from hotluks.runner import transaction as tx
from hotluks.runner.journal import validate
from hotluks.runner.native_path import native_disk, native_record, why_not_native
from hotluks.runner.vmstate import VMSnapshot
from hotluks.secrets import SecretValue
from testsupport.fakeqemu import FakeQemu

ATTACHED = """<disk type='file' device='disk'><driver name='qemu' type='raw'/>
<source file='/var/tmp/x.img'><encryption format='luks'><secret type='passphrase' uuid='{u}'/></encryption></source>
<target dev='vdb' bus='virtio'/></disk>"""
UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def test_native_record_round_trips_and_is_undone_by_target() -> None:
    disk = native_disk(Disk.from_xml(ATTACHED.format(u=UUID)))
    assert disk.alias == "ua-hl-vdb"
    record = native_record("dom", disk, "<disk/>", persistent=True, vm_key="k", instance="i1", fingerprint="f",
                           header_fingerprint="")
    doc = json.loads(json.dumps(record.to_json()))
    again = validate(doc)
    assert again.path == "libvirt-native" and again.device == "ua-hl-vdb"
    assert tx.undo_command(again.steps[0]) == ("detach-device", {"id": "ua-hl-vdb", "target": "vdb",
                                                                 "persistent": True})
    here = VMSnapshot(frozenset(), frozenset(), frozenset({"ua-hl-vdb"}))
    again.status = "attached"
    assert tx.entry_status(again, here, "i2") == ("attached", True)  # libvirt carried it into a new QEMU
    assert tx.entry_status(again, VMSnapshot(frozenset(), frozenset(), frozenset()), "i2") == ("lost", False)
    doc["steps"][0]["arguments"]["target"] = "vdc"
    with pytest.raises(ValueError, match="not libvirt's disk vdb"):
        validate(doc)
    doc["steps"][0]["arguments"]["target"], doc["path"] = "vdb", "elsewhere"
    with pytest.raises(ValueError, match="unknown path"):
        validate(doc)


def test_why_not_native(example_xml: Path) -> None:
    disk = Disk.from_xml(ATTACHED.format(u=UUID))
    assert "libvirt domain is needed" in str(why_not_native(FakeQemu(), disk, {}))
    libvirt_like = FakeQemu(passes_fds=True)  # named "libvirt"
    assert why_not_native(libvirt_like, disk, {}) is None
    assert "--secret" in str(why_not_native(libvirt_like, disk, {UUID: SecretValue(b"x")}))
    assert "cannot express" in str(why_not_native(libvirt_like, Disk.from_xml(example_xml), {}))
