"""A LUKS1 detached header stored in an RBD image opens through QEMU's ``luks`` driver.

The header is made by ``cryptsetup luksFormat --type luks1 --header`` (payload
offset 0) and ``rbd import``ed; the payload is a local file or another RBD
image. Plaintext written offline through the *local* header reads back through
the *RBD* header in QEMU, and the other way round.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hotluks.rbd_read import RbdLocation, read_image_head
from testsupport.ceph import CephCluster

pytestmark = [pytest.mark.ceph, pytest.mark.qemu, pytest.mark.cryptsetup, pytest.mark.slow]

PAYLOAD_BYTES = 16 * 1024 * 1024


@dataclass
class DetachedVolume:
    header_file: Path
    payload_file: Path
    header_image: str


def local_luks_opts(vol: DetachedVolume, payload: Path) -> str:
    return (f"driver=luks,key-secret=sec0,file.driver=file,file.filename={payload},"
            f"header.driver=file,header.filename={vol.header_file}")


def qemu_io_local(vol: DetachedVolume, payload: Path, passfile: Path, *commands: str) -> str:
    args = ["qemu-io", "--object", f"secret,id=sec0,file={passfile}", "--image-opts", local_luks_opts(vol, payload)]
    for command in commands:
        args += ["-c", command]
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True)
    return done.stdout + done.stderr


@pytest.fixture
def volume(ceph_cluster: CephCluster, workdir: Path, passfile: Path, image_name: str) -> Iterator[DetachedVolume]:
    if shutil.which("cryptsetup") is None:
        pytest.skip("cryptsetup not installed: run scripts/setup-system.sh")
    header, payload = workdir / "hdr.img", workdir / "payload.raw"
    with open(payload, "wb") as out:
        out.truncate(PAYLOAD_BYTES)
    subprocess.run(["cryptsetup", "luksFormat", "--type", "luks1", "--batch-mode", "--header", str(header),
                    "--key-file", str(passfile), "--pbkdf-force-iterations", "1000", str(payload)],
                   check=True, capture_output=True, timeout=60)
    vol = DetachedVolume(header, payload, f"{image_name}-hdr")
    # offline, through the local header: 0x11 in the first 64 KiB
    assert "wrote 65536/65536" in qemu_io_local(vol, payload, passfile, "write -P 0x11 0 65536")
    ceph_cluster.import_file(header, vol.header_image)
    yield vol
    ceph_cluster.remove_image(vol.header_image)


@pytest.mark.parametrize("payload_on", ["file", "rbd"])
def test_detached_luks1_header_in_rbd(ceph_cluster: CephCluster, volume: DetachedVolume, vm, passfile: Path,
                                      passphrase: bytes, payload_on: str, workdir: Path) -> None:
    payload_image = f"{volume.header_image}-payload"
    if payload_on == "rbd":
        ceph_cluster.import_file(volume.payload_file, payload_image)
        payload_node = ceph_cluster.rbd_node(payload_image, **{"node-name": "pl0"})
    else:
        payload_node = {"driver": "file", "node-name": "pl0", "filename": str(volume.payload_file)}
    try:
        vm.qmp("object-add", {"qom-type": "secret", "id": "sec0", "file": str(passfile)})
        vm.qmp("blockdev-add", ceph_cluster.rbd_node(volume.header_image, **{"node-name": "hdr0"}))
        vm.qmp("blockdev-add", payload_node)
        vm.qmp("blockdev-add", {"driver": "luks", "node-name": "crypt0", "file": "pl0", "header": "hdr0",
                                "key-secret": "sec0"})
        info = {n["node-name"]: n for n in vm.qmp("query-named-block-nodes")}["crypt0"]
        assert info["drv"] == "luks"
        assert info["image"]["virtual-size"] == PAYLOAD_BYTES  # detached: payload offset 0
        out = vm.qemu_io("crypt0", "read -P 0x11 0 65536")
        assert "read 65536/65536 bytes" in out and "verification failed" not in out
        out = vm.qemu_io("crypt0", "write -P 0x22 65536 65536")
        assert "wrote 65536/65536 bytes at offset 65536" in out
        for node in ("crypt0", "pl0", "hdr0"):
            vm.qmp("blockdev-del", {"node-name": node})

        payload = volume.payload_file
        if payload_on == "rbd":
            payload = ceph_cluster.export(payload_image, workdir / "payload.out")
        raw = payload.read_bytes()
        assert b"\x22" * 4096 not in raw and b"\x11" * 4096 not in raw  # ciphertext on the payload
        assert not raw.startswith(b"LUKS")  # no signature on a detached payload
        out = qemu_io_local(volume, payload, passfile, "read -P 0x11 0 65536", "read -P 0x22 65536 65536")
        assert out.count("read 65536/65536") == 2 and "verification failed" not in out
        assert passphrase.decode() not in vm.proc.output()
    finally:
        if payload_on == "rbd":
            ceph_cluster.remove_image(payload_image)


def test_detached_header_wrong_passphrase(ceph_cluster: CephCluster, volume: DetachedVolume, vm,
                                          wrong_passfile: Path) -> None:
    vm.qmp("object-add", {"qom-type": "secret", "id": "bad0", "file": str(wrong_passfile)})
    vm.qmp("blockdev-add", ceph_cluster.rbd_node(volume.header_image, **{"node-name": "hdr0"}))
    vm.qmp("blockdev-add", {"driver": "file", "node-name": "pl0", "filename": str(volume.payload_file)})
    err = vm.qmp_error("blockdev-add", {"driver": "luks", "node-name": "crypt0", "file": "pl0",
                                        "header": "hdr0", "key-secret": "bad0"})
    assert err.desc == "Invalid password, cannot unlock any keyslot"
    assert "crypt0" not in vm.node_names()


def test_rbd_read_returns_the_stored_header(ceph_cluster: CephCluster, volume: DetachedVolume) -> None:
    """The preflight's reader gets exactly the header bytes that were imported."""
    expected = volume.header_file.read_bytes()
    loc = RbdLocation(pool=ceph_cluster.pool, image=volume.header_image, conf=str(ceph_cluster.conf_path))
    assert read_image_head(loc, 4096) == expected[:4096]
    assert read_image_head(loc, len(expected) + 8192) == expected  # short image: what there is


def test_preflight_reader_feeds_the_luks_engine(ceph_cluster: CephCluster, volume: DetachedVolume,
                                                passphrase: bytes) -> None:
    """What the runner's preflight does for a header on RBD: read_rbd_head(Source) → open → unlock."""
    from hotluks import luks
    from hotluks.errors import WrongPassphraseError
    from hotluks.model import Source
    from hotluks.rbd_read import read_rbd_head

    source = Source(kind="network", protocol="rbd", name=f"{ceph_cluster.pool}/{volume.header_image}",
                    config_file=str(ceph_cluster.conf_path))
    header = luks.open_header(read_rbd_head(source, 16 * 1024 * 1024))
    assert header.payload_offset == 0
    luks.unlock(header, passphrase)
    with pytest.raises(WrongPassphraseError):
        luks.unlock(header, b"not-the-passphrase")
