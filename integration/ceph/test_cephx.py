"""cephx: QEMU's rbd node authenticates as a non-admin user with ``user`` + ``key-secret``.

The cluster's conf holds keys only for its daemons and client.admin, so
client.hotluks can connect only with the key QEMU is handed in a secret object.
QEMU base64-encodes the secret's bytes before giving them to librados, so the
secret object carries the key as ``"format": "base64"`` (as libvirt does).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from testsupport.ceph import CephCluster

pytestmark = [pytest.mark.ceph, pytest.mark.qemu, pytest.mark.slow]


@pytest.fixture
def cx_image(cephx_cluster: CephCluster, image_name: str, passfile: Path) -> Iterator[str]:
    cephx_cluster.create_image(image_name, 64)
    cephx_cluster.encryption_format(image_name, "luks2", passfile)
    yield image_name
    cephx_cluster.remove_image(image_name)


@pytest.fixture
def keyfile(cephx_cluster: CephCluster, workdir: Path) -> Path:
    return cephx_cluster.write_client_key(workdir / "client.key")


def test_user_and_key_secret_open_encrypted_image(cephx_cluster: CephCluster, cx_image: str, vm, passfile: Path,
                                                  keyfile: Path, passphrase: bytes) -> None:
    vm.qmp("object-add", {"qom-type": "secret", "id": "ceph0", "file": str(keyfile), "format": "base64"})
    vm.qmp("object-add", {"qom-type": "secret", "id": "sec0", "file": str(passfile)})
    vm.qmp("blockdev-add", cephx_cluster.rbd_node(cx_image, **{
        "node-name": "crypt0", "user": cephx_cluster.client_name, "key-secret": "ceph0",
        "encrypt": {"format": "luks2", "key-secret": "sec0"}}))
    out = vm.qemu_io("crypt0", "write -P 0x3c 4096 8192")
    assert "wrote 8192/8192 bytes at offset 4096" in out
    out = vm.qemu_io("crypt0", "read -P 0x3c 4096 8192")
    assert "read 8192/8192 bytes" in out and "verification failed" not in out
    vm.qmp("blockdev-del", {"node-name": "crypt0"})
    assert cephx_cluster.read_plaintext(cx_image, "luks2", passfile, 8192, offset=4096) == b"\x3c" * 8192
    output = vm.proc.output()
    assert passphrase.decode() not in output and cephx_cluster.client_key not in output


def test_mon_host_list_instead_of_conf(cephx_cluster: CephCluster, cx_image: str, vm, passfile: Path,
                                       keyfile: Path) -> None:
    """``server`` (libvirt's <host>) works on either mon port, with no conf file at all."""
    vm.qmp("object-add", {"qom-type": "secret", "id": "ceph0", "file": str(keyfile), "format": "base64"})
    vm.qmp("object-add", {"qom-type": "secret", "id": "sec0", "file": str(passfile)})
    for i, port in enumerate((cephx_cluster.ports.mon_v2, cephx_cluster.ports.mon_v1)):
        node = {"driver": "rbd", "node-name": f"srv{i}", "pool": cephx_cluster.pool, "image": cx_image,
                "server": [{"host": "127.0.0.1", "port": str(port)}], "user": cephx_cluster.client_name,
                "key-secret": "ceph0", "encrypt": {"format": "luks2", "key-secret": "sec0"}}
        vm.qmp("blockdev-add", node)
        assert "verification failed" not in vm.qemu_io(f"srv{i}", "read -P 0 0 4096")
        vm.qmp("blockdev-del", {"node-name": f"srv{i}"})


def test_missing_or_bad_key_is_a_qmp_error(cephx_cluster: CephCluster, cx_image: str, vm, passfile: Path,
                                           workdir: Path) -> None:
    vm.qmp("object-add", {"qom-type": "secret", "id": "sec0", "file": str(passfile)})
    base = cephx_cluster.rbd_node(cx_image, **{"node-name": "crypt0", "user": cephx_cluster.client_name,
                                               "encrypt": {"format": "luks2", "key-secret": "sec0"}})
    # no key-secret, and no keyring for client.hotluks in the conf
    err = vm.qmp_error("blockdev-add", base)
    assert err.desc == "error connecting: No such file or directory"
    # the key given raw instead of as format=base64: QEMU re-encodes the text, librados rejects it
    raw = cephx_cluster.write_client_key(workdir / "raw.key")
    vm.qmp("object-add", {"qom-type": "secret", "id": "raw0", "file": str(raw)})
    err = vm.qmp_error("blockdev-add", {**base, "key-secret": "raw0"})
    assert err.desc == "error connecting: Invalid argument"
    # a well-formed but wrong key
    wrong = bytearray(base64.b64decode(cephx_cluster.client_key))
    wrong[-1] ^= 0xFF
    (workdir / "wrong.key").write_text(base64.b64encode(bytes(wrong)).decode())
    vm.qmp("object-add", {"qom-type": "secret", "id": "wrong0", "file": str(workdir / "wrong.key"),
                          "format": "base64"})
    err = vm.qmp_error("blockdev-add", {**base, "key-secret": "wrong0"})
    assert err.desc == "error connecting: Permission denied"
    assert "crypt0" not in vm.node_names()
    assert cephx_cluster.client_key not in err.desc
