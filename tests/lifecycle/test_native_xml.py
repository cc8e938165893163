"""libvirt's own <disk> for shapes libvirt expresses: rendered from the model, it parses back to the same disk."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hotluks.lifecycle.native_xml import libvirt_disk_xml, libvirt_expressible
from hotluks.model import Disk, Source

EXAMPLES = Path(__file__).resolve().parents[2] / "xml" / "examples"


def without_lines(disk: Disk) -> Disk:
    def clean(src: Source) -> Source:
        return dataclasses.replace(src, line=None)
    enc = disk.encryption
    if enc is not None and enc.header is not None:
        enc = dataclasses.replace(enc, header=dataclasses.replace(enc.header, source=clean(enc.header.source)))
    return dataclasses.replace(disk, source=clean(disk.source), encryption=enc)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.xml")))
def test_round_trip_or_refusal(example: str) -> None:
    disk = Disk.from_xml(EXAMPLES / example)
    if not libvirt_expressible(disk):
        assert disk.encryption is not None and disk.encryption.header is not None  # only detached headers
        with pytest.raises(ValueError, match="cannot express"):
            libvirt_disk_xml(disk)
        return
    again = Disk.from_xml(libvirt_disk_xml(disk))
    assert without_lines(again) == without_lines(disk)


def test_encryption_sits_in_source_with_engine_only_for_librbd() -> None:
    qemu = libvirt_disk_xml(Disk.from_xml(EXAMPLES / "attached-luks-raw.xml"))
    assert "<source file=" in qemu and "<encryption format=\"luks\">" in qemu.replace("'", '"')
    rbd = libvirt_disk_xml(Disk.from_xml(EXAMPLES / "librbd-layered.xml"))
    assert 'engine="librbd"' in rbd.replace("'", '"') and rbd.count("type=\"passphrase\"") == 3
