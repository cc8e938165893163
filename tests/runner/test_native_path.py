"""The libvirt-native path's record: one ``libvirt-disk`` step, validated, undone through libvirt by target."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotluks.errors import InputError, RefusedError
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
    assert again.path == "libvirt-native" and again.device == "ua-hl-vdb" and tx.native_persistent(again)
    live_only = native_record("dom", disk, "<disk/>", persistent=False, vm_key="k", instance="i1", fingerprint="f",
                              header_fingerprint="")
    assert not tx.native_persistent(live_only)
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


def test_auto_is_the_default_and_picks_libvirt_where_libvirt_can() -> None:
    """CLI, sync and async API and the operator all default to ``auto``: libvirt's device API for a
    disk libvirt expresses with its secrets in libvirt's store, else QMP (always on a bare QEMU)."""
    import inspect

    from hotluks.api import AsyncSession, Session
    from hotluks.cli.main import build_parser
    from hotluks.runner.native_path import choose_path
    from hotluks.runner.operator import Operator

    for fn in (Operator.attach, AsyncSession.attach, Session.attach):
        assert inspect.signature(fn).parameters["path"].default == "auto", fn
    assert build_parser().parse_args(["attach", "dom", "d.xml"]).path == "auto"
    disk = Disk.from_xml(ATTACHED.format(u=UUID))
    libvirt_like = FakeQemu(passes_fds=True)  # named "libvirt"
    native, why = choose_path(libvirt_like, disk, {}, "auto")
    assert native and "libvirt expresses a attached-luks disk" in why
    native, why = choose_path(libvirt_like, disk, {UUID: SecretValue(b"x")}, "auto")
    assert not native and "--secret" in why
    assert choose_path(libvirt_like, disk, {}, "qmp") == (False, "--path qmp")
    native, why = choose_path(FakeQemu(), disk, {}, "auto")  # a bare QEMU stays on the monitor path
    assert not native and "libvirt domain is needed" in why
    with pytest.raises(RefusedError, match="cannot take the libvirt-native path"):
        choose_path(FakeQemu(), disk, {}, "libvirt-native")
    with pytest.raises(InputError, match="path must be one of"):
        choose_path(libvirt_like, disk, {}, "monitor")  # type: ignore[arg-type]


def test_persistent_needs_a_libvirt_domain() -> None:
    from hotluks.runner.keep import keep_for

    with pytest.raises(RefusedError, match="needs a libvirt domain"):
        keep_for(FakeQemu(), None, None)
    keep = keep_for(FakeQemu(passes_fds=True), Path("/k"), "qemu")
    assert keep.key_dir == Path("/k") and keep.qemu_user == "qemu"
