"""Boot real QEMU with ``hotluks cold-cmdline`` for every local example and read the plaintext back.

For each example: images made by cryptsetup / qemu-img, plaintext written by standalone
qemu-io, then ``cold-cmdline --format json --secret …`` boots QEMU (-S), and QMP shows
every planned node, the device, the device's node, and HMP ``qemu-io`` reads the pattern
through that node (plus a negative control with the wrong pattern).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import start_qemu

pytestmark = [pytest.mark.qemu, pytest.mark.cryptsetup]

KEY = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


@dataclass
class Prepared:
    xml: Path
    secret_key: str
    image_opts: str  # how standalone qemu-io opens the same volume, written by hand
    payloads: list[Path]
    notes: list[str] = field(default_factory=list)


def attached(images: Any, example: str, old: str, key: str = KEY) -> Prepared:
    vol = images.raw("volume.luks", 8)
    images.luks1(vol)
    return Prepared(images.rewrite(example, {old: str(vol)}), key,
                    f"driver=luks,key-secret=sec0,file.driver=file,file.filename={vol}", [vol])


def detached_files(images: Any, example: str, payload_old: str, header_old: str) -> Prepared:
    payload, header = images.raw("payload.raw"), images.root / "header.img"
    images.luks1(payload, header)
    opts = (f"driver=luks,key-secret=sec0,file.driver=file,file.filename={payload},"
            f"header.driver=file,header.filename={header}")
    return Prepared(images.rewrite(example, {payload_old: str(payload), header_old: str(header)}), KEY, opts,
                    [payload])


def prepare_attached_luks_raw(images: Any) -> Prepared:
    return attached(images, "attached-luks-raw", "/var/lib/hotluks/volume.luks")


def prepare_usb_attached(images: Any) -> Prepared:
    return attached(images, "usb-attached", "/var/lib/hotluks/stick.luks", key="usb-stick")


def prepare_qcow2_native(images: Any) -> Prepared:
    img = images.qcow2("encrypted.qcow2", encrypted=True)
    opts = f"driver=qcow2,encrypt.format=luks,encrypt.key-secret=sec0,file.driver=file,file.filename={img}"
    return Prepared(images.rewrite("qcow2-native", {"/var/lib/hotluks/encrypted.qcow2": str(img)}), KEY, opts, [img])


def prepare_qemu_doc_detached_qcow2(images: Any) -> Prepared:
    payload, header = images.qcow2("payload.qcow2"), images.root / "header.img"
    images.luks1(images.raw("cryptsetup-scratch"), header)  # cryptsetup writes only the detached header
    opts = (f"driver=luks,key-secret=sec0,file.driver=qcow2,file.file.driver=file,file.file.filename={payload},"
            f"header.driver=file,header.filename={header}")
    xml = images.rewrite("qemu-doc-detached-qcow2", {"/var/lib/hotluks/payload.qcow2": str(payload),
                                                    "/var/lib/hotluks/header.img": str(header)})
    return Prepared(xml, KEY, opts, [payload])


def prepare_readonly_detached(images: Any) -> Prepared:
    return detached_files(images, "readonly-detached", "/var/lib/hotluks/archive.raw",
                          "/var/lib/hotluks/archive.hdr")


def prepare_scsi_detached(images: Any) -> Prepared:
    return detached_files(images, "scsi-detached", "/var/lib/hotluks/payload.raw", "/var/lib/hotluks/header.img")


def prepare_detached_raw_block(images: Any) -> Prepared:
    """Block devices: loop devices over files; where losetup cannot work, type='file' stands in."""
    payload_file, header_file = images.raw("payload.raw"), images.root / "header.img"
    images.luks1(payload_file, header_file)
    payload, header = images.loop(payload_file), images.loop(header_file)
    paths = {"/dev/vg0/payload-header": header, "/dev/vg0/payload": payload}
    if payload is not None and header is not None:
        xml = images.rewrite("detached-raw-block", {k: str(v) for k, v in paths.items()})
        opts = (f"driver=luks,key-secret=sec0,file.driver=host_device,file.filename={payload},"
                f"header.driver=host_device,header.filename={header}")
        return Prepared(xml, "payload-key", opts, [payload_file], ["loop devices"])
    # no loop devices here (e.g. an unprivileged container): the same disk with type='file' sources
    xml = images.rewrite("detached-raw-block", {"/dev/vg0/payload-header": str(header_file),
                                                "/dev/vg0/payload": str(payload_file)},
                         replace={"type='block'": "type='file'", "dev=": "file="})
    opts = (f"driver=luks,key-secret=sec0,file.driver=file,file.filename={payload_file},"
            f"header.driver=file,header.filename={header_file}")
    return Prepared(xml, "payload-key", opts, [payload_file], ["type='file' stand-in"])


@dataclass
class Scenario:
    prepare: Callable[[Any], Prepared]
    machine: str = "q35"
    qemu_args: tuple[str, ...] = ()
    cold_args: tuple[str, ...] = ()
    read_only: bool = False


SCENARIOS = {
    "attached-luks-raw": Scenario(prepare_attached_luks_raw),
    "detached-raw-block": Scenario(prepare_detached_raw_block),
    "qcow2-native": Scenario(prepare_qcow2_native),
    "qemu-doc-detached-qcow2": Scenario(prepare_qemu_doc_detached_qcow2),
    # its <address bus='0'> is the root bus: pci.0 on -M pc, or pcie.0 on q35 with --pci-root-bus
    "readonly-detached-pc": Scenario(prepare_readonly_detached, machine="pc", read_only=True),
    "readonly-detached-q35": Scenario(prepare_readonly_detached, cold_args=("--pci-root-bus", "pcie.0"),
                                      read_only=True),
    "scsi-detached": Scenario(prepare_scsi_detached, qemu_args=("-device", "virtio-scsi-pci,id=scsi0")),
    "usb-attached": Scenario(prepare_usb_attached, qemu_args=("-device", "qemu-xhci")),
}

LOCAL_EXAMPLES = {"attached-luks-raw", "detached-raw-block", "qcow2-native", "qemu-doc-detached-qcow2",
                  "readonly-detached", "scsi-detached", "usb-attached"}


def test_every_local_example_has_a_scenario() -> None:
    examples = Path(__file__).resolve().parents[2] / "xml" / "examples"
    local = {p.stem for p in examples.glob("*.xml")
             if "protocol=" not in p.read_text()}
    assert local == LOCAL_EXAMPLES
    assert {name.removesuffix("-pc").removesuffix("-q35") for name in SCENARIOS} == LOCAL_EXAMPLES


@pytest.mark.parametrize("name", SCENARIOS, ids=list(SCENARIOS))
def test_cold_boot_reads_the_plaintext(name: str, images: Any, monitor_for: Any) -> None:
    scenario = SCENARIOS[name]
    prep = scenario.prepare(images)
    images.write_pattern(prep.image_opts)
    for payload in prep.payloads:  # the payload really is encrypted
        assert bytes([images.pattern]) * 4096 not in payload.read_bytes()

    secret = f"{prep.secret_key}={images.passfile}"
    argv: list[str] = json.loads(images.hotluks("cold-cmdline", str(prep.xml), "--format", "json",
                                                "--secret", secret, *scenario.cold_args).stdout)
    plan = images.plan(prep.xml)
    assert images.passphrase not in " ".join(argv).encode()
    assert {"qom-type": "secret", "id": plan["steps"][0]["arguments"]["id"], "file": str(images.passfile)} \
        == json.loads(argv[1])

    with start_qemu([*scenario.qemu_args, *argv], machine=scenario.machine) as proc:
        qmp = monitor_for(proc)
        planned = [s["arguments"]["node-name"] for s in plan["steps"] if s["execute"] == "blockdev-add"]
        nodes = {n["node-name"]: n for n in qmp("query-named-block-nodes")}
        assert set(planned) <= set(nodes), f"missing nodes: {set(planned) - set(nodes)}"
        assert {n for n in nodes if n.startswith("hl-")} == set(planned)
        assert plan["device"] in [p["name"] for p in qmp("qom-list", {"path": "/machine/peripheral"})]

        # QEMU names the device by its id, or by its QOM path when the block backend sits
        # on a child (virtio-blk's virtio-backend)
        device_path = f"/machine/peripheral/{plan['device']}"
        used = [b for b in qmp("query-block") if "inserted" in b and (
            b.get("qdev") == plan["device"] or b.get("qdev", "").startswith(device_path + "/"))]
        assert len(used) == 1, json.dumps(qmp("query-block"))[:3000]
        inserted = used[0]["inserted"]
        top = inserted["node-name"]
        assert top == plan["top_node"]
        assert inserted["ro"] is scenario.read_only
        assert all(nodes[n]["ro"] is scenario.read_only for n in planned)

        good = qmp.qemu_io(top, f"read -P {images.pattern:#x} 0 {images.length}")
        assert f"read {images.length}/{images.length} bytes at offset 0" in good, (good, prep.notes)
        assert "Pattern verification failed" not in good, good
        bad = qmp.qemu_io(top, f"read -P {images.pattern ^ 0xFF:#x} 0 {images.length}")
        assert "Pattern verification failed" in bad, bad  # negative control: the check can fail

        assert images.passphrase.strip() not in proc.output().encode()
