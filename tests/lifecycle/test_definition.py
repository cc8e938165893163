"""Adding/removing one disk's <qemu:commandline> arguments in a domain definition."""

from __future__ import annotations

import json

from hotluks.lifecycle.definition import has_disk, with_disk, without_disk
from hotluks.lifecycle.libvirt_cmdline import KEY_OBJECT, QEMU_NS

KEY = ["-object", json.dumps({"qom-type": "secret", "id": KEY_OBJECT, "file": "/k"})]


def disk_argv(target: str) -> list[str]:
    return [*KEY, "-object", json.dumps({"qom-type": "secret", "id": f"hl-{target}-key"}),
            "-blockdev", json.dumps({"node-name": f"hl-{target}-proto", "driver": "file", "filename": "/p"}),
            "-device", json.dumps({"driver": "virtio-blk-pci", "id": f"hl-{target}", "drive": f"hl-{target}-proto"})]


DOMAIN = ("<domain type='qemu'><name>d</name><devices/><qemu:commandline xmlns:qemu='"
          + QEMU_NS + "'><qemu:arg value='-global'/><qemu:arg value='x=y'/></qemu:commandline></domain>")


def values(xml: str) -> list[str]:
    from lxml import etree

    return [a.get("value") for a in etree.fromstring(xml.encode()).iter(f"{{{QEMU_NS}}}arg")]


def test_add_two_disks_share_one_key_and_keep_foreign_args() -> None:
    both = with_disk(with_disk(DOMAIN, "hl-vdb", disk_argv("vdb")), "hl-vdc", disk_argv("vdc"))
    args = values(both)
    assert args[:2] == ["-global", "x=y"]
    assert sum(KEY_OBJECT in a for a in args) == 1 and len(args) == 2 + 2 + 3 * 2 * 2
    assert has_disk(both, "hl-vdb") and has_disk(both, "hl-vdc") and not has_disk(both, "hl-vdd")


def test_replace_and_remove() -> None:
    once = with_disk(DOMAIN, "hl-vdb", disk_argv("vdb"))
    assert values(with_disk(once, "hl-vdb", disk_argv("vdb"))) == values(once)  # replaced, not doubled
    both = with_disk(once, "hl-vdc", disk_argv("vdc"))
    only_c = without_disk(both, "hl-vdb")
    assert not has_disk(only_c, "hl-vdb") and has_disk(only_c, "hl-vdc") and KEY_OBJECT in "".join(values(only_c))
    bare = without_disk(only_c, "hl-vdc")
    assert values(bare) == ["-global", "x=y"]  # the key object goes with the last disk


def test_a_domain_without_the_qemu_namespace_gets_it() -> None:
    plain = "<domain type='qemu'><name>d</name><devices><disk type='file'/></devices></domain>"
    out = with_disk(plain, "hl-vdb", disk_argv("vdb"))
    assert f"xmlns:qemu=\"{QEMU_NS}\"" in out and "<disk type=\"file\"/>" in out and has_disk(out, "hl-vdb")
    assert "commandline" not in without_disk(out, "hl-vdb")
