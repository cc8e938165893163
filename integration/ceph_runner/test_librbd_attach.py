"""librbd's own LUKS engine end to end through hotluks: images made by ``rbd encryption format``
(LUKS1 and LUKS2) are attached via the QMP backend (API and CLI) and the libvirt backend,
the plaintext written beforehand reads back through the device's top node, and detach
leaves the VM exactly as it was."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import hotluks
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import UnsupportedError
from testsupport.vms import (
    PATTERN,
    Monitor,
    backend_snapshot,
    leaks,
    qemu_io_read,
    read_pattern_via_log,
    run_cli,
)

if TYPE_CHECKING:
    from conftest import Ceph

pytestmark = [pytest.mark.ceph, pytest.mark.qemu, pytest.mark.slow]

MiB = 1024 * 1024
XML_FORMAT = {"luks1": "luks", "luks2": "luks2"}
DATA_OFFSET = {"luks1": 4 * MiB, "luks2": 16 * MiB}


def rbd_node(monitor: Monitor, name: str) -> dict[str, object]:
    nodes = {n["node-name"]: n for n in monitor.cmd("query-named-block-nodes", {"flat": True})}
    return dict(nodes[name])


@pytest.mark.parametrize("fmt", ["luks1", "luks2"])
def test_api_attach_reads_plaintext_and_detach_restores(ceph: Ceph, fmt: str, vm: QemuProcess, monitor: Monitor,
                                                        assert_unchanged: Callable[[], None], state_dir: Path,
                                                        workdir: Path) -> None:
    image = ceph.librbd_image(fmt)
    xml = workdir / "disk.xml"
    xml.write_text(ceph.librbd_xml(image, XML_FORMAT[fmt]))
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        result = session.attach(hotluks.Disk.from_xml(xml), ceph.secrets())
        assert result.shape == "librbd"
        assert [s.execute for s in result.steps] == ["object-add", "blockdev-add", "blockdev-add", "device_add"]
        protocol = next(s.name for s in result.steps if s.execute == "blockdev-add")
        node = rbd_node(monitor, protocol)
        assert node["drv"] == "rbd"
        # librbd hides its own header: the device sees the image minus the data offset
        assert node["image"]["virtual-size"] == 32 * MiB - DATA_OFFSET[fmt]  # type: ignore[index]
        assert qemu_io_read(monitor, vm, result.top_node, timeout=30) == "ok"
        assert qemu_io_read(monitor, vm, result.top_node, pattern=0xCD, timeout=30) == "mismatch"
        assert [d["status"] for d in session.status()] == ["attached"]
        session.detach("vdb")
    assert_unchanged()


def test_cli_cephx_attach_detach(cephx: Ceph, vm: QemuProcess, monitor: Monitor, assert_unchanged: Callable[[], None],
                                 state_dir: Path, workdir: Path, passphrase: bytes) -> None:
    """cephx: ``<auth username='hotluks'>`` + a ceph secret → ``user``/``key-secret`` (base64) on the rbd node."""
    image = cephx.librbd_image("luks2")
    xml = workdir / "disk.xml"
    xml.write_text(cephx.librbd_xml(image, "luks2"))
    attach = run_cli("attach", f"unix:{vm.qmp_path}", xml, *cephx.secret_args(workdir), "--state-dir", state_dir,
                     "--json", timeout=120)
    assert attach.returncode == 0, attach.stderr
    result = json.loads(attach.stdout)
    assert result["shape"] == "librbd" and result["preflight"].startswith("no LUKS header that hotluks can read")
    ids = [s["name"] for s in result["steps"] if s["execute"] == "object-add"]
    assert len(ids) == 2  # the passphrase and the cephx key
    protocol = next(s["name"] for s in result["steps"] if s["execute"] == "blockdev-add")
    node = rbd_node(monitor, protocol)
    assert node["drv"] == "rbd" and "hotluks" in json.dumps(node)  # user=hotluks in the node's options
    assert qemu_io_read(monitor, vm, result["top_node"], timeout=30) == "ok"
    detach = run_cli("detach", f"unix:{vm.qmp_path}", "--target", "vdb", "--state-dir", state_dir, timeout=60)
    assert detach.returncode == 0, detach.stderr
    assert_unchanged()
    outputs = [attach.stdout, attach.stderr, detach.stdout, detach.stderr, vm.output()]
    assert not leaks(passphrase, outputs)
    assert not leaks(cephx.cluster.client_key.encode(), outputs)






@pytest.mark.libvirt
def test_libvirt_domain_cephx_with_libvirt_secrets(cephx: Ceph, libvirt_uri: str, state_dir: Path,
                                                   passphrase: bytes) -> None:
    """Transient libvirt domain; the passphrase and the cephx key come from libvirt secrets (the key
    stored decoded, as `virsh secret-set-value --base64` does) and reach QEMU sealed under masterKey0;
    the disk names its monitors with ``<host>`` (no conf file for the libvirt-qemu user to read)."""
    import base64

    from hotluks.backends.select import open_backend
    from hotluks.runner.operator import Operator
    from testsupport.libvirtd import QEMU_LOG_DIR, define_secret, start_domain

    image = cephx.librbd_image("luks1")
    disk = hotluks.Disk.from_xml(cephx.librbd_xml(image, "luks", hosts=True))
    pass_usage, ceph_usage = (ref.usage for ref in disk.secrets)
    with start_domain(libvirt_uri) as domain, contextlib.ExitStack() as stack:
        stack.enter_context(define_secret(libvirt_uri, "volume", str(pass_usage), passphrase))
        stack.enter_context(define_secret(libvirt_uri, "ceph", str(ceph_usage),
                                          base64.b64decode(cephx.cluster.client_key)))
        log = QEMU_LOG_DIR / f"{domain.name}.log"

        async def main() -> None:
            async with await open_backend(domain.name, uri=domain.uri, backend="libvirt", timeout=60) as backend:
                before = await backend_snapshot(backend)
                op = Operator(backend, state_dir=state_dir)
                result = await op.attach(disk, {}, path="qmp")
                secret_ids = [s.name for s in result.steps if s.execute == "object-add"]
                assert len(secret_ids) == 2
                for obj in secret_ids:  # sealed: QEMU decrypted both with masterKey0
                    assert await backend.execute("qom-get", {"path": f"/objects/{obj}",
                                                             "property": "keyid"}) == "masterKey0"
                assert await read_pattern_via_log(backend, log, result.top_node, PATTERN) == "ok"
                assert await read_pattern_via_log(backend, log, result.top_node, 0xCD) == "mismatch"
                await op.detach("vdb", timeout=20)
                assert await backend_snapshot(backend) == before

        asyncio.run(asyncio.wait_for(main(), 180))
        assert not leaks(passphrase, [log.read_bytes()])


@pytest.mark.libvirt
def test_libvirt_cli_with_secret_file_and_conf(ceph: Ceph, libvirt_uri: str, state_dir: Path, workdir: Path,
                                               passphrase: bytes) -> None:
    """``hotluks attach DOMAIN --secret …`` through libvirt: the passphrase from a file, the cluster
    from a ``<config file>`` the libvirt-qemu user can read; detach via the CLI restores the domain."""
    from hotluks.backends.select import open_backend
    from testsupport.libvirtd import QEMU_LOG_DIR, qemu_accessible_dir, start_domain

    image = ceph.librbd_image("luks2")
    with start_domain(libvirt_uri) as domain, qemu_accessible_dir() as shared:
        xml = workdir / "disk.xml"
        xml.write_text(ceph.librbd_xml(image, "luks2", conf=ceph.client_conf(shared / "ceph.conf")))
        log = QEMU_LOG_DIR / f"{domain.name}.log"
        common = ["--connect", libvirt_uri, "--backend", "libvirt", "--state-dir", str(state_dir)]

        async def look(read: bool) -> tuple[tuple[frozenset[str], ...], list[str]]:
            async with await open_backend(domain.name, uri=domain.uri, backend="libvirt", timeout=60) as backend:
                seen = [await read_pattern_via_log(backend, log, "hl-vdb-fmt", p) for p in (PATTERN, 0xCD)] if read else []
                return await backend_snapshot(backend), seen

        before, _ = asyncio.run(look(False))
        attach = run_cli("attach", domain.name, xml, *ceph.secret_args(workdir), *common, "--path", "qmp", "--json",
                         timeout=120)
        assert attach.returncode == 0, attach.stdout + attach.stderr
        result = json.loads(attach.stdout)
        assert result["top_node"] == "hl-vdb-fmt"
        _, seen = asyncio.run(look(True))
        assert seen == ["ok", "mismatch"]
        detach = run_cli("detach", domain.name, "--target", "vdb", *common, timeout=60)
        assert detach.returncode == 0, detach.stdout + detach.stderr
        assert asyncio.run(look(False))[0] == before
        assert not leaks(passphrase, [attach.stdout, attach.stderr, detach.stdout, detach.stderr, log.read_bytes()])


@pytest.mark.parametrize("fmt", ["luks1", "luks2"])
def test_resize_of_a_librbd_encrypted_image_is_refused(ceph: Ceph, fmt: str, vm: QemuProcess, monitor: Monitor,
                                                       assert_unchanged: Callable[[], None], state_dir: Path,
                                                       workdir: Path) -> None:
    """``hotluks resize`` refuses the librbd engine (exit 2, size unchanged), and the reason still holds:
    QEMU's block_resize sets the *raw* image size, so the decrypted disk ends up offset-short (LUKS2: it
    shrinks although it was asked to grow). When this oracle fails, QEMU/librbd fixed it: lift the refusal."""
    image = ceph.librbd_image(fmt)
    xml = workdir / "disk.xml"
    xml.write_text(ceph.librbd_xml(image, XML_FORMAT[fmt]))
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        top = session.attach(hotluks.Disk.from_xml(xml), ceph.secrets()).top_node
        before = 32 * MiB - DATA_OFFSET[fmt]
        with pytest.raises(UnsupportedError, match="librbd") as refused:
            session.resize("vdb", "+8M")
        assert refused.value.exit_code == 2
        assert rbd_node(monitor, top)["image"]["virtual-size"] == before  # type: ignore[index]
        session.detach("vdb")
    assert_unchanged()
    scratch = f"resize-oracle-{fmt}"  # the oracle resizes its own image: the shared one keeps its size
    ceph.cluster.create_image(scratch, 32)
    try:
        ceph.cluster.encryption_format(scratch, fmt, ceph.passfile)
        xml.write_text(ceph.librbd_xml(scratch, XML_FORMAT[fmt]))
        with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
            top = session.attach(hotluks.Disk.from_xml(xml), ceph.secrets()).top_node
            monitor.cmd("block_resize", {"node-name": top, "size": before + 8 * MiB})
            after = rbd_node(monitor, top)["image"]["virtual-size"]
            assert after == before + 8 * MiB - DATA_OFFSET[fmt], after
            session.detach("vdb")
    finally:
        ceph.cluster.remove_image(scratch)
