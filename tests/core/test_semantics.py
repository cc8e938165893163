"""The block graphs are the ones libvirt builds; ordering, naming, conflicts and capabilities."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotluks.errors import CapabilityError, ConflictError
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.planner import PlanContext, build_plan
from hotluks.plan.steps import Plan

K0 = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
K1 = "5b7b6d3c-2d3a-4e8f-9b1a-7c6d5e4f3a2b"
K2 = "9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a"
CEPH = "3c9a2d1e-7f6b-4a5c-9d8e-1f2a3b4c5d6e"
RBD_SOURCE = """<source protocol='rbd' name='pool/img'>
    <host name='mon1' port='6789'/>
    <auth username='admin'><secret type='ceph' uuid='{ceph}'/></auth>
  </source>""".format(ceph=CEPH)


def disk(inner: str, *, kind: str = "file", fmt: str = "raw", target: str = "vdb") -> Disk:
    return Disk.from_xml(f"""<disk type='{kind}' device='disk'>
  <driver name='qemu' type='{fmt}'/>
  {inner}
  <target dev='{target}' bus='virtio'/>
</disk>""")


def enc(fmt: str = "luks", engine: str = "", *keys: str) -> str:
    eng = f" engine='{engine}'" if engine else ""
    secrets = "".join(f"<secret type='passphrase' uuid='{k}'/>" for k in (keys or (K0,)))
    return f"<encryption format='{fmt}'{eng}>{secrets}</encryption>"


def calls(plan: Plan) -> list[tuple[str, dict[str, Any]]]:
    return [(s.command, s.arguments) for s in plan.steps]


RBD_ARGS = {"driver": "rbd", "pool": "pool", "image": "img", "server": [{"host": "mon1", "port": "6789"}],
            "user": "admin", "auth-client-required": ["cephx", "none"], "key-secret": "hl-vdb-auth"}


# -- libvirt's own encryption cases ---------------------------------------------------------------

def test_attached_luks_on_raw_is_protocol_then_luks() -> None:
    plan = build_plan(disk("<source file='/img/a.luks'/>" + enc()))
    assert calls(plan) == [
        ("object-add", {"qom-type": "secret", "id": "hl-vdb-key"}),
        ("blockdev-add", {"node-name": "hl-vdb-proto", "driver": "file", "filename": "/img/a.luks"}),
        ("blockdev-add", {"node-name": "hl-vdb-luks", "driver": "luks", "file": "hl-vdb-proto",
                          "key-secret": "hl-vdb-key"}),
        ("device_add", {"driver": "virtio-blk-pci", "id": "hl-vdb", "drive": "hl-vdb-luks"}),
    ]
    assert plan.secrets[0].ref.uuid == K0 and plan.secrets[0].encoding == "raw"


def test_qcow2_native_encryption() -> None:
    plan = build_plan(disk("<source file='/img/a.qcow2'/>" + enc(), fmt="qcow2"))
    assert calls(plan)[1:3] == [
        ("blockdev-add", {"node-name": "hl-vdb-proto", "driver": "file", "filename": "/img/a.qcow2"}),
        ("blockdev-add", {"node-name": "hl-vdb-fmt", "driver": "qcow2", "file": "hl-vdb-proto",
                          "encrypt": {"format": "luks", "key-secret": "hl-vdb-key"}}),
    ]
    assert len(plan.steps) == 4 and plan.top_node == "hl-vdb-fmt"


def test_encryption_under_source_means_the_same_as_under_disk() -> None:
    under_disk = disk("<source file='/img/a.qcow2'/>" + enc(), fmt="qcow2")
    under_source = disk("<source file='/img/a.qcow2'>" + enc() + "</source>", fmt="qcow2")
    assert under_disk == under_source
    assert calls(build_plan(under_disk)) == calls(build_plan(under_source))


def test_rbd_with_qemu_engine_is_rbd_node_then_luks() -> None:
    plan = build_plan(disk(RBD_SOURCE + enc("luks", "qemu"), kind="network"))
    assert calls(plan) == [
        ("object-add", {"qom-type": "secret", "id": "hl-vdb-key"}),
        ("object-add", {"qom-type": "secret", "id": "hl-vdb-auth"}),
        ("blockdev-add", {"node-name": "hl-vdb-proto", **RBD_ARGS}),
        ("blockdev-add", {"node-name": "hl-vdb-luks", "driver": "luks", "file": "hl-vdb-proto",
                          "key-secret": "hl-vdb-key"}),
        ("device_add", {"driver": "virtio-blk-pci", "id": "hl-vdb", "drive": "hl-vdb-luks"}),
    ]
    auth = plan.secrets[1]
    assert (auth.ref.kind, auth.ref.uuid, auth.encoding) == ("ceph", CEPH, "base64")


@pytest.mark.parametrize("fmt", ["luks", "luks2", "luks-any"])
def test_librbd_is_rbd_node_with_encrypt_then_raw(fmt: str) -> None:
    """``encrypt`` on the rbd node as in libvirt (which elides the empty raw layer; hotluks keeps it)."""
    plan = build_plan(disk(RBD_SOURCE + enc(fmt, "librbd"), kind="network"))
    assert calls(plan)[2:] == [
        ("blockdev-add", {"node-name": "hl-vdb-proto", **RBD_ARGS,
                          "encrypt": {"format": fmt, "key-secret": "hl-vdb-key"}}),
        ("blockdev-add", {"node-name": "hl-vdb-fmt", "driver": "raw", "file": "hl-vdb-proto"}),
        ("device_add", {"driver": "virtio-blk-pci", "id": "hl-vdb", "drive": "hl-vdb-fmt"}),
    ]
    assert not any(a.get("driver") == "luks" for _, a in calls(plan))


def test_librbd_three_layers_nest_parents_in_order() -> None:
    """As libvirt: secret 0 (the image) outermost, each next secret its parent.

    Same nesting as libvirt's tests/qemuxmlconfdata/disk-network-rbd-encryption-layering.x86_64-latest.args.
    """
    plan = build_plan(disk(RBD_SOURCE + enc("luks2", "librbd", K0, K1, K2), kind="network"))
    assert plan.object_ids == ("hl-vdb-key0", "hl-vdb-key1", "hl-vdb-key2", "hl-vdb-auth")
    assert [b.ref.uuid for b in plan.secrets[:3]] == [K0, K1, K2]
    rbd = next(s.arguments for s in plan.steps if s.arguments.get("driver") == "rbd")
    assert rbd["encrypt"] == {
        "format": "luks2", "key-secret": "hl-vdb-key0",
        "parent": {"format": "luks2", "key-secret": "hl-vdb-key1",
                   "parent": {"format": "luks2", "key-secret": "hl-vdb-key2"}},
    }


def test_librbd_with_qcow2_keeps_qcow2_over_rbd() -> None:
    plan = build_plan(disk(RBD_SOURCE + enc("luks", "librbd"), kind="network", fmt="qcow2"))
    assert plan.steps[-2].arguments == {"node-name": "hl-vdb-fmt", "driver": "qcow2", "file": "hl-vdb-proto"}


def test_detached_header_raw_payload_layout() -> None:
    plan = build_plan(disk("<source file='/img/p'/><encryption format='luks'>"
                           f"<secret type='passphrase' uuid='{K0}'/>"
                           "<header type='file'><source file='/img/h'/></header></encryption>"))
    assert [(s.role, s.arguments.get("driver")) for s in plan.steps] == [
        ("key", None), ("header-protocol", "file"), ("header-format", "raw"), ("payload-protocol", "file"),
        ("payload-format", "raw"), ("luks", "luks"), ("device", "virtio-blk-pci")]
    luks = plan.steps[5].arguments
    assert (luks["file"], luks["header"], luks["key-secret"]) == ("hl-vdb-fmt", "hl-vdb-hdr-fmt", "hl-vdb-key")


def test_plain_disk_is_protocol_then_format() -> None:
    plan = build_plan(disk("<source file='/img/plain.qcow2'/>", fmt="qcow2"))
    assert [c for c, _ in calls(plan)] == ["blockdev-add", "blockdev-add", "device_add"]
    assert plan.secrets == ()


def test_iscsi_password_is_raw_and_ceph_key_is_base64() -> None:
    """libvirt stores both decoded: a Ceph key file holds base64 text, a CHAP password file the password."""
    d = Disk.from_xml("""<disk type='network'><source protocol='iscsi' name='iqn.2013-07.com.example:t/2'>
      <host name='portal' port='3261'/><auth username='chap'><secret type='iscsi' usage='chap-pw'/></auth>
      </source><encryption format='luks'><secret type='passphrase' usage='k'/></encryption>
      <target dev='sdb' bus='scsi'/></disk>""")
    plan = build_plan(d)
    assert [(b.ref.kind, b.encoding) for b in plan.secrets] == [("passphrase", "raw"), ("iscsi", "raw")]
    assert plan.steps[2].arguments == {
        "node-name": "hl-sdb-proto", "driver": "iscsi", "transport": "tcp", "portal": "portal:3261",
        "target": "iqn.2013-07.com.example:t", "lun": 2, "user": "chap", "password-secret": "hl-sdb-auth"}
    rbd = build_plan(disk(RBD_SOURCE + enc(), kind="network"))
    assert [(b.ref.kind, b.encoding) for b in rbd.secrets] == [("passphrase", "raw"), ("ceph", "base64")]


def test_nbd_sources() -> None:
    tcp = build_plan(Disk.from_xml("""<disk type='network'><source protocol='nbd' name='exp'>
      <host name='10.0.0.1'/></source><target dev='vdb'/></disk>"""))
    assert tcp.steps[0].arguments == {"node-name": "hl-vdb-proto", "driver": "nbd", "export": "exp",
                                      "server": {"type": "inet", "host": "10.0.0.1", "port": "10809"}}
    unix = build_plan(Disk.from_xml("""<disk type='network'><source protocol='nbd'>
      <host transport='unix' socket='/run/nbd.sock'/></source><target dev='vdb'/></disk>"""))
    assert unix.steps[0].arguments["server"] == {"type": "unix", "path": "/run/nbd.sock"}


def test_shared_auth_secret_is_one_object() -> None:
    """Header and payload on the same Ceph cluster with the same key: one secret object."""
    hdr = RBD_SOURCE.replace("pool/img", "pool/hdr")
    plan = build_plan(disk(RBD_SOURCE + f"<encryption format='luks'><secret type='passphrase' uuid='{K0}'/>"
                           f"<header type='network'>{hdr}</header></encryption>", kind="network"))
    assert plan.object_ids == ("hl-vdb-key", "hl-vdb-auth")
    rbd_nodes = [s.arguments for s in plan.steps if s.arguments.get("driver") == "rbd"]
    assert [n["key-secret"] for n in rbd_nodes] == ["hl-vdb-auth", "hl-vdb-auth"]


def test_driver_options_follow_libvirt() -> None:
    d = Disk.from_xml("""<disk type='block'><driver name='qemu' type='raw' cache='directsync' io='native'
        discard='ignore' detect_zeroes='unmap'/><source dev='/dev/sdz'/>
        <encryption format='luks'><secret type='passphrase' usage='k'/></encryption>
        <target dev='vdb' bus='virtio'/></disk>""")
    plan = build_plan(d)
    proto, luks = plan.steps[1].arguments, plan.steps[2].arguments
    assert proto["driver"] == "host_device" and proto["aio"] == "native"
    assert proto["cache"] == luks["cache"] == {"direct": True, "no-flush": False}
    # detect_zeroes='unmap' without discard='unmap' becomes 'on', as libvirt does (QEMU refuses it)
    assert luks["detect-zeroes"] == "on" and luks["discard"] == "ignore"
    assert plan.steps[-1].arguments["write-cache"] == "off"


# -- invariants over every example ------------------------------------------------------------------

def _referenced_names(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [n for k, v in value.items() if k not in ("node-name", "id") for n in _referenced_names(v)]
    if isinstance(value, list):
        return [n for v in value for n in _referenced_names(v)]
    return [value] if isinstance(value, str) else []


def test_everything_is_created_before_it_is_referenced(example: Path) -> None:
    plan = build_plan(Disk.from_xml(example))
    created: set[str] = set()
    all_names = set(plan.node_names) | set(plan.object_ids)
    kinds = [s.kind for s in plan.steps]
    assert kinds == sorted(kinds, key=["secret", "node", "device"].index)
    for step in plan.steps:
        refs = {r for r in _referenced_names(step.arguments) if r in all_names}
        assert refs <= created, f"{step.name} references {refs - created} before they exist"
        created.add(step.name)
    # every secret object is referenced by some node
    used = {r for s in plan.steps for r in _referenced_names(s.arguments)}
    assert set(plan.object_ids) <= used


NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,30}$")


def _check_names(plan: Plan) -> None:
    names = [s.name for s in plan.steps]
    assert len(names) == len(set(names)), names
    for name in names:
        assert NAME_RE.match(name), name
        assert not name.startswith("libvirt-")


def test_example_names_are_valid_unique_and_deterministic(example: Path) -> None:
    disk_ = Disk.from_xml(example)
    first, second = build_plan(disk_), build_plan(Disk.from_xml(example))
    assert [s.qmp() for s in first.steps] == [s.qmp() for s in second.steps]
    _check_names(first)
    target = disk_.target_dev
    assert all(n.startswith(f"hl-{target}-") for n in first.node_names + first.object_ids)


@settings(max_examples=60, deadline=None)
@given(target=st.from_regex(r"\A(vd|sd|hd|xvd|ub)[a-z]{1,4}\Z"),
       alias=st.none() | st.from_regex(r"\Aua-[A-Za-z0-9_-]{1,28}\Z"),
       layers=st.integers(1, 3))
def test_names_hold_for_any_target(target: str, alias: str | None, layers: int) -> None:
    alias_el = f"<alias name='{alias}'/>" if alias else ""
    keys = [K0, K1, K2][:layers]
    xml = f"""<disk type='network'><source protocol='rbd' name='p/i'>
      <auth username='u'><secret type='ceph' usage='c'/></auth></source>{enc('luks2', 'librbd', *keys)}
      <target dev='{target}' bus='virtio'/>{alias_el}</disk>"""
    plan = build_plan(Disk.from_xml(xml))
    _check_names(plan)
    assert plan.device_id == (alias or f"hl-{target}")
    hdr = build_plan(Disk.from_xml(f"""<disk type='file'><source file='/p'/><encryption format='luks'>
      <secret type='passphrase' usage='k'/><header type='file'><source file='/h'/></header></encryption>
      <target dev='{target}' bus='virtio'/>{alias_el}</disk>"""))
    _check_names(hdr)


def test_two_targets_never_share_names(example: Path) -> None:
    a = build_plan(Disk.from_xml(example))
    other = example.read_text().replace(f"dev='{a.disk.target_dev}'", "dev='vdzz'")
    b = build_plan(Disk.from_xml(other))
    names_a = set(a.node_names + a.object_ids)
    assert not names_a & set(b.node_names + b.object_ids)


# -- conflicts ---------------------------------------------------------------------------------------

def test_existing_names_clash_is_a_conflict(example: Path) -> None:
    d = Disk.from_xml(example)
    plan = build_plan(d)
    for taken in (plan.node_names[-1], plan.object_ids[0], plan.device_id):
        with pytest.raises(ConflictError) as info:
            build_plan(d, context=PlanContext(existing_names=frozenset({taken, "libvirt-1-format"})))
        assert taken in str(info.value) and d.target_dev in str(info.value)
        assert info.value.exit_code == 2


def test_libvirt_names_in_the_vm_do_not_conflict() -> None:
    d = disk("<source file='/img/a'/>" + enc())
    existing = frozenset({"libvirt-1-storage", "libvirt-1-format", "virtio-disk0", "hl-vdc-proto"})
    assert build_plan(d, context=PlanContext(existing_names=existing)).device_id == "hl-vdb"


def test_rbd_snapshot_as_libvirt() -> None:
    d = Disk.from_xml("""<disk type='network'><source protocol='rbd' name='pool/ns/image@snap1'/>
      <encryption format='luks' engine='librbd'><secret type='passphrase' usage='k'/></encryption>
      <target dev='vdb'/><readonly/></disk>""")
    rbd = build_plan(d).steps[1].arguments
    assert (rbd["pool"], rbd["namespace"], rbd["image"], rbd["snapshot"], rbd["read-only"]) == (
        "pool", "ns", "image", "snap1", True)
    assert "snapshot" not in build_plan(disk(RBD_SOURCE, kind="network")).steps[1].arguments


def test_removable_scsi_and_usb() -> None:
    for bus, driver in (("scsi", "scsi-hd"), ("usb", "usb-storage")):
        d = Disk.from_xml(f"<disk type='file'><source file='/a'/><target dev='sdb' bus='{bus}' removable='on'/></disk>")
        assert build_plan(d).steps[-1].arguments == {"driver": driver, "id": "hl-sdb", "drive": "hl-sdb-fmt",
                                                     "removable": True}


def test_context_places_devices() -> None:
    virtio = build_plan(disk("<source file='/img/a'/>" + enc()), context=PlanContext(pci_bus="pci.3"))
    assert virtio.steps[-1].arguments["bus"] == "pci.3"
    scsi = Disk.from_xml("<disk type='file'><source file='/a'/><target dev='sdb' bus='scsi'/></disk>")
    assert build_plan(scsi, context=PlanContext(scsi_bus="scsi0.0")).steps[-1].arguments["bus"] == "scsi0.0"
    fixed = Disk.from_xml("<disk type='file'><source file='/a'/><target dev='vdb' bus='virtio'/>"
                          "<address type='pci' bus='0' slot='0x1f' function='3' multifunction='on'/></disk>")
    dev = build_plan(fixed, context=PlanContext(pci_root_bus="pcie.0")).steps[-1].arguments
    assert (dev["bus"], dev["addr"], dev["multifunction"]) == ("pcie.0", "0x1f.0x3", True)


# -- capabilities ------------------------------------------------------------------------------------

def _ex(golden_dir: Path, name: str) -> Disk:
    return Disk.from_xml(golden_dir.parents[2] / "xml" / "examples" / f"{name}.xml")


def test_no_detached_header_support_is_refused(golden_dir: Path) -> None:
    old = Capabilities(qemu_version=(8, 2, 0), luks_detached_header=False)
    with pytest.raises(CapabilityError) as info:
        build_plan(_ex(golden_dir, "qemu-doc-detached-qcow2"), old)
    msg = str(info.value)
    assert "BlockdevOptionsLUKS.header" in msg and "9.0" in msg and "8.2.0" in msg
    # attached LUKS does not need it
    assert build_plan(_ex(golden_dir, "attached-luks-raw"), old).top_node == "hl-vde-luks"


def test_missing_luks_any_is_refused(golden_dir: Path) -> None:
    caps = Capabilities(rbd_encrypt_formats=frozenset({"luks", "luks2"}))
    with pytest.raises(CapabilityError, match="luks-any"):
        build_plan(_ex(golden_dir, "librbd-luks-any"), caps)
    assert build_plan(_ex(golden_dir, "librbd-luks2"), caps)


def test_missing_parent_is_refused(golden_dir: Path) -> None:
    caps = Capabilities(rbd_encrypt_parent=False)
    with pytest.raises(CapabilityError, match="parent"):
        build_plan(_ex(golden_dir, "librbd-layered"), caps)
    assert build_plan(_ex(golden_dir, "librbd-luks"), caps)


def test_missing_block_driver_is_refused(golden_dir: Path) -> None:
    caps = Capabilities(block_drivers=frozenset({"file", "raw", "luks", "qcow2"}))
    with pytest.raises(CapabilityError, match="'rbd' block driver"):
        build_plan(_ex(golden_dir, "header-on-rbd"), caps)
    assert build_plan(_ex(golden_dir, "qemu-doc-detached-qcow2"), caps)


def _schema() -> tuple[list[dict[str, Any]], dict[str, Any]]:
    doc = json.loads((Path(__file__).parent / "data" / "qmp-schema-blockdev-10.0.2.json").read_text())
    return doc["schema"], doc["version"]


def _drop_member(schema: list[dict[str, Any]], owner_case: str, member: str) -> list[dict[str, Any]]:
    """A copy of ``schema`` where the blockdev-add branch ``owner_case`` (or rbd's encrypt) lacks ``member``."""
    out: list[dict[str, Any]] = json.loads(json.dumps(schema))
    index = {e["name"]: e for e in out}
    options = index[index["blockdev-add"]["arg-type"]]
    branch = index[next(v["type"] for v in options["variants"] if v["case"] == owner_case)]
    if owner_case == "rbd":
        branch = index[next(m["type"] for m in branch["members"] if m["name"] == "encrypt")]
    branch["members"] = [m for m in branch["members"] if m["name"] != member]
    return out


def test_capabilities_from_recorded_qemu_schema() -> None:
    schema, version = _schema()
    caps = Capabilities.from_qmp(schema, version)
    assert caps.qemu_version == (10, 0, 2)
    assert caps.luks_detached_header and caps.rbd_encrypt_parent
    assert caps.rbd_encrypt_formats == {"luks", "luks2", "luks-any"}
    assert {"file", "host_device", "rbd", "nbd", "iscsi", "luks", "qcow2", "raw"} <= set(caps.block_drivers or ())


def test_capabilities_of_an_older_schema() -> None:
    schema, _ = _schema()
    assert not Capabilities.from_qmp(_drop_member(schema, "luks", "header")).luks_detached_header
    assert not Capabilities.from_qmp(_drop_member(schema, "rbd", "parent")).rbd_encrypt_parent
    bare = Capabilities.from_qmp([e for e in schema if e["name"] != "blockdev-add"], None)
    assert not bare.luks_detached_header and bare.block_drivers == frozenset() and bare.version_text == "unknown"
