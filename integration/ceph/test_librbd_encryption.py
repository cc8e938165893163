"""librbd's own LUKS engine through real QEMU 10.0 + librbd 16: what works, what is refused.

The error texts asserted here are QEMU's/librbd's exact messages; the runner shows them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.ceph import CephCluster

pytestmark = [pytest.mark.ceph, pytest.mark.qemu, pytest.mark.slow]

MiB = 1024 * 1024
IMAGE_MB = 64
#: QMP encrypt.format per rbd encryption format, and librbd's data offset for each
QEMU_FORMAT = {"luks1": "luks", "luks2": "luks2"}
DATA_OFFSET = {"luks1": 4 * MiB, "luks2": 16 * MiB}


@pytest.fixture
def image(ceph_cluster: CephCluster, image_name: str) -> Iterator[str]:
    ceph_cluster.create_image(image_name, IMAGE_MB)
    yield image_name
    ceph_cluster.remove_image(image_name)


def add_secret(vm: object, secret_id: str, path: Path, **extra: str) -> None:
    vm.qmp("object-add", {"qom-type": "secret", "id": secret_id, "file": str(path), **extra})  # type: ignore[attr-defined]


def assert_no_secret(passphrase: bytes, *texts: str) -> None:
    for text in texts:
        assert passphrase.decode() not in text


@pytest.mark.parametrize("fmt", ["luks1", "luks2"])
def test_librbd_luks_roundtrip(ceph_cluster: CephCluster, image: str, vm, passfile: Path, passphrase: bytes,
                               fmt: str, workdir: Path) -> None:
    ceph_cluster.encryption_format(image, fmt, passfile)
    offline = os.urandom(64 * 1024)
    ceph_cluster.write_plaintext(image, fmt, passfile, offline, offset=1 * MiB)

    add_secret(vm, "sec0", passfile)
    node = ceph_cluster.rbd_node(image, **{"node-name": "crypt0",
                                           "encrypt": {"format": QEMU_FORMAT[fmt], "key-secret": "sec0"}})
    vm.qmp("blockdev-add", node)
    info = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes")}["crypt0"]
    assert info["drv"] == "rbd"
    # librbd hides its header: the guest sees the image minus the data offset
    assert info["image"]["virtual-size"] == IMAGE_MB * MiB - DATA_OFFSET[fmt]

    out = vm.qemu_io("crypt0", "write -P 0x5a 0 65536")
    assert "wrote 65536/65536 bytes at offset 0" in out
    out = vm.qemu_io("crypt0", "read -P 0x5a 0 65536")
    assert "read 65536/65536 bytes at offset 0" in out and "verification failed" not in out
    out = vm.qemu_io("crypt0", f"read -P 0x00 {2 * MiB} 4096")  # never written: reads as zeroes
    assert "verification failed" not in out
    vm.qmp("blockdev-del", {"node-name": "crypt0"})
    vm.qmp("object-del", {"id": "sec0"})

    # the plaintext written offline by qemu-io is intact, and QEMU's write is visible offline
    assert ceph_cluster.read_plaintext(image, fmt, passfile, len(offline), offset=1 * MiB) == offline
    assert ceph_cluster.read_plaintext(image, fmt, passfile, 65536) == b"\x5a" * 65536
    # ... while the stored bytes are ciphertext behind librbd's LUKS header
    raw = ceph_cluster.export(image, workdir / "raw").read_bytes()
    magic = b"LUKS\xba\xbe\x00\x01" if fmt == "luks1" else b"LUKS\xba\xbe\x00\x02"
    assert raw.startswith(magic)
    start = DATA_OFFSET[fmt]
    assert raw[start:start + 65536] != b"\x5a" * 65536
    assert offline not in raw
    assert_no_secret(passphrase, vm.proc.output())


@pytest.mark.parametrize("fmt", ["luks1", "luks2"])
def test_wrong_passphrase_is_a_qmp_error(ceph_cluster: CephCluster, image: str, vm, passfile: Path,
                                         wrong_passfile: Path, passphrase: bytes, fmt: str) -> None:
    ceph_cluster.encryption_format(image, fmt, passfile)
    add_secret(vm, "bad0", wrong_passfile)
    err = vm.qmp_error("blockdev-add", ceph_cluster.rbd_node(
        image, **{"node-name": "crypt0", "encrypt": {"format": QEMU_FORMAT[fmt], "key-secret": "bad0"}}))
    assert err.error_class == "GenericError"
    assert err.desc == "encryption load fail: Operation not permitted"
    assert "crypt0" not in vm.node_names()
    assert_no_secret(passphrase, err.desc, vm.proc.output())


def test_format_mismatch_is_a_qmp_error(ceph_cluster: CephCluster, image: str, vm, passfile: Path) -> None:
    """A LUKS1 image opened as luks2 fails at once (no passphrase check)."""
    ceph_cluster.encryption_format(image, "luks1", passfile)
    add_secret(vm, "sec0", passfile)
    err = vm.qmp_error("blockdev-add", ceph_cluster.rbd_node(
        image, **{"node-name": "crypt0", "encrypt": {"format": "luks2", "key-secret": "sec0"}}))
    assert err.desc == "encryption load fail: Invalid argument"


def test_luks_any_refused_by_librbd_16(ceph_cluster: CephCluster, image: str, vm, passfile: Path) -> None:
    ceph_cluster.encryption_format(image, "luks2", passfile)
    add_secret(vm, "sec0", passfile)
    err = vm.qmp_error("blockdev-add", ceph_cluster.rbd_node(
        image, **{"node-name": "crypt0", "encrypt": {"format": "luks-any", "key-secret": "sec0"}}))
    assert err.desc == "unknown image encryption format: 2: Operation not supported"
    assert "crypt0" not in vm.node_names()


def test_parent_chain_refused_by_qemu_on_librbd_16(ceph_cluster: CephCluster, image: str, vm,
                                                   passfile: Path, image_name: str) -> None:
    """A clone of an encrypted parent, opened with a ``parent`` layer: QEMU refuses it."""
    ceph_cluster.encryption_format(image, "luks2", passfile)
    snap = f"{ceph_cluster.spec(image)}@base"
    clone = f"{image_name}-clone"
    ceph_cluster.rbd("snap", "create", snap)
    ceph_cluster.rbd("snap", "protect", snap)
    ceph_cluster.rbd("clone", snap, ceph_cluster.spec(clone))
    try:
        add_secret(vm, "sec0", passfile)
        add_secret(vm, "sec1", passfile)
        err = vm.qmp_error("blockdev-add", ceph_cluster.rbd_node(clone, **{
            "node-name": "crypt0",
            "encrypt": {"format": "luks2", "key-secret": "sec0",
                        "parent": {"format": "luks2", "key-secret": "sec1"}}}))
        assert err.desc == "RBD library does not support layered encryption"
        assert "crypt0" not in vm.node_names()
    finally:
        ceph_cluster.remove_image(clone)
        ceph_cluster.rbd("snap", "unprotect", snap)


def test_clone_cannot_be_encryption_formatted_on_16(ceph_cluster: CephCluster, image: str, passfile: Path,
                                                    image_name: str) -> None:
    snap = f"{ceph_cluster.spec(image)}@base"
    clone = f"{image_name}-clone"
    ceph_cluster.rbd("snap", "create", snap)
    ceph_cluster.rbd("snap", "protect", snap)
    ceph_cluster.rbd("clone", snap, ceph_cluster.spec(clone))
    try:
        with pytest.raises(Exception) as info:
            ceph_cluster.encryption_format(clone, "luks2", passfile)
        assert "encryption format" in str(info.value)
    finally:
        ceph_cluster.remove_image(clone)
        ceph_cluster.rbd("snap", "unprotect", snap)
