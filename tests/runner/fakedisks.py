"""Disks of every shape for the fake-QEMU tests (files are empty: the fake never reads them)."""

from __future__ import annotations

from pathlib import Path

from hotluks.model import Disk
from hotluks.secrets import SecretValue

UUID = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
SHAPES = ("detached-header-qcow2", "detached-header-raw", "attached-luks", "qcow2-native")
SECRETS = {UUID: SecretValue(b"fake-passphrase")}


def disk_xml(tmp: Path, shape: str, target: str = "vdb", bus: str = "virtio", *, name: str = "payload") -> str:
    payload, header = tmp / f"{name}.img", tmp / f"{name}.hdr"
    payload.touch()
    header.touch()
    fmt = "qcow2" if shape in ("detached-header-qcow2", "qcow2-native") else "raw"
    head = (f"<header type='file'><source file='{header}'/><driver type='raw'/></header>"
            if shape.startswith("detached") else "")
    return (f"<disk type='file' device='disk'><driver name='qemu' type='{fmt}'/>"
            f"<source file='{payload}'/><encryption format='luks' engine='qemu'>"
            f"<secret type='passphrase' uuid='{UUID}'/>{head}</encryption>"
            f"<target dev='{target}' bus='{bus}'/></disk>")


def make(tmp: Path, shape: str, target: str = "vdb", bus: str = "virtio", **kw: str) -> Disk:
    path = tmp / f"{target}-{shape}.xml"
    path.write_text(disk_xml(tmp, shape, target, bus, **kw))
    return Disk.from_xml(path)
