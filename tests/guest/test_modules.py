"""Module closure and load order from modules.dep text."""

from __future__ import annotations

import pytest

from hotluks.demo.guest.errors import GuestUnavailableError
from hotluks.demo.guest.modules import load_order, module_name, parse_builtin, parse_modules_dep

DEP = """\
kernel/drivers/virtio/virtio.ko.xz: kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz:
kernel/drivers/virtio/virtio_pci.ko.xz: kernel/drivers/virtio/virtio_pci_modern_dev.ko.xz \
kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/block/virtio_blk.ko.xz: kernel/drivers/virtio/virtio.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/scsi/scsi_common.ko.xz:
kernel/drivers/scsi/scsi_mod.ko.xz: kernel/drivers/scsi/scsi_common.ko.xz
kernel/lib/crc-t10dif.ko.xz: kernel/crypto/crct10dif_common.ko.xz
kernel/crypto/crct10dif_common.ko.xz:
kernel/drivers/scsi/sd_mod.ko.xz: kernel/lib/crc-t10dif.ko.xz kernel/drivers/scsi/scsi_mod.ko.xz \
kernel/drivers/scsi/scsi_common.ko.xz kernel/crypto/crct10dif_common.ko.xz
kernel/fs/unrelated.ko.xz: kernel/drivers/scsi/scsi_mod.ko.xz
"""


def position(order: list[str], name: str) -> int:
    return [module_name(p) for p in order].index(name)


def test_module_name_strips_suffix_and_normalises_dashes() -> None:
    assert module_name("kernel/lib/crc-t10dif.ko.xz") == "crc_t10dif"
    assert module_name("kernel/drivers/virtio/virtio.ko") == "virtio"
    assert module_name("x/y/z.ko.zst") == "z"


def test_parse_modules_dep_reads_heads_and_dependencies() -> None:
    deps = parse_modules_dep(DEP)
    assert deps["kernel/drivers/virtio/virtio_ring.ko.xz"] == ()
    assert deps["kernel/drivers/block/virtio_blk.ko.xz"] == (
        "kernel/drivers/virtio/virtio.ko.xz", "kernel/drivers/virtio/virtio_ring.ko.xz")


def test_load_order_is_the_closure_with_dependencies_first() -> None:
    order = load_order(parse_modules_dep(DEP), ["virtio_pci", "virtio_blk", "sd_mod"])
    names = [module_name(p) for p in order]
    assert sorted(names) == sorted({"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci", "virtio_blk",
                                    "scsi_common", "scsi_mod", "crct10dif_common", "crc_t10dif", "sd_mod"})
    assert len(names) == len(set(names))
    assert "unrelated" not in names
    deps = parse_modules_dep(DEP)
    for path in order:
        for dep in deps[path]:
            assert order.index(dep) < order.index(path), (dep, path)
    assert position(order, "virtio_ring") < position(order, "virtio") < position(order, "virtio_blk")


def test_dash_spelling_of_a_wanted_module_is_accepted() -> None:
    order = load_order(parse_modules_dep(DEP), ["crc-t10dif"])
    assert [module_name(p) for p in order] == ["crct10dif_common", "crc_t10dif"]


def test_builtin_modules_are_skipped() -> None:
    builtin = parse_builtin("kernel/drivers/block/virtio_blk.ko\n")
    assert load_order(parse_modules_dep(DEP), ["virtio_blk"], builtin) == []


def test_missing_module_is_a_typed_error() -> None:
    with pytest.raises(GuestUnavailableError, match="nvme"):
        load_order(parse_modules_dep(DEP), ["nvme"])


def test_cycle_is_a_typed_error() -> None:
    with pytest.raises(GuestUnavailableError, match="cycle"):
        load_order(parse_modules_dep("a.ko: b.ko\nb.ko: a.ko\n"), ["a"])
