"""LUKS1 detached headers stored in RBD (engine='qemu'): attach with the payload in Ceph or in a
local file, read the plaintext back, detach clean; and preflight reads the header from RBD
(with the cephx key when the header's ``<auth>`` names one) so that a wrong passphrase is
refused with exit 2 before anything is sent to the VM."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

import hotluks
from hotluks.errors import PreflightError
from hotluks.qemu.launcher import QemuProcess
from hotluks.testing.qmpproxy import MUTATING, QMPProxy
from hotluks.testing.vms import Monitor, leaks, qemu_io_read, run_cli

if TYPE_CHECKING:
    from conftest import Ceph

pytestmark = [pytest.mark.ceph, pytest.mark.qemu]


@pytest.mark.parametrize("payload", ["file", "rbd"])
def test_header_in_rbd_attach_read_detach(payload: str, ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                                          assert_unchanged: Callable[[], None], state_dir: Path) -> None:
    images = ceph.detached_header()
    where = images["payload-rbd"] if payload == "rbd" else images["payload-file"]
    disk = hotluks.Disk.from_xml(ceph.header_xml(images["header"], where, payload_in_rbd=payload == "rbd"))
    assert disk.shape == "detached-header-raw"
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session:
        result = session.attach(disk, ceph.secrets())
        assert result.preflight == f"header on rbd rbd/{images['header']} opens with the passphrase"
        nodes = {n["node-name"]: n for n in monitor.cmd("query-named-block-nodes", {"flat": True})}
        assert nodes[result.top_node]["drv"] == "luks"
        header_proto = next(s.name for s in result.steps if s.execute == "blockdev-add")
        assert nodes[header_proto]["drv"] == "rbd"
        assert qemu_io_read(monitor, vm, result.top_node) == "ok"
        assert qemu_io_read(monitor, vm, result.top_node, pattern=0xCD) == "mismatch"
        session.detach("vdc")
    assert_unchanged()


def test_cephx_header_in_rbd_preflight_uses_the_key_cli(cephx: Ceph, vm: QemuProcess, monitor: Monitor,
                                                        assert_unchanged: Callable[[], None], workdir: Path,
                                                        state_dir: Path, passphrase: bytes) -> None:
    """client.hotluks has no keyring: preflight can only read the header with the key it is handed."""
    images = cephx.detached_header()
    xml = workdir / "disk.xml"
    xml.write_text(cephx.header_xml(images["header"], images["payload-rbd"], payload_in_rbd=True))
    attach = run_cli("attach", f"unix:{vm.qmp_path}", xml, *cephx.secret_args(workdir), "--state-dir", state_dir,
                     "--json", timeout=120)
    assert attach.returncode == 0, attach.stdout + attach.stderr
    result = json.loads(attach.stdout)
    assert result["preflight"] == f"header on rbd rbd/{images['header']} opens with the passphrase"
    assert qemu_io_read(monitor, vm, result["top-node"]) == "ok"
    detach = run_cli("detach", f"unix:{vm.qmp_path}", "--target", "vdc", "--state-dir", state_dir)
    assert detach.returncode == 0, detach.stderr
    assert_unchanged()
    out = [attach.stdout, attach.stderr, detach.stdout, detach.stderr]
    assert not leaks(passphrase, out) and not leaks(cephx.cluster.client_key.encode(), out)


@pytest.mark.parametrize("variant", ["auth-none", "cephx"])
def test_wrong_passphrase_refused_before_the_vm_is_touched(variant: str, request: pytest.FixtureRequest,
                                                           vm: QemuProcess, monitor: Monitor,
                                                           assert_unchanged: Callable[[], None], workdir: Path,
                                                           state_dir: Path) -> None:
    ceph = request.getfixturevalue("ceph" if variant == "auth-none" else "cephx")
    images = ceph.detached_header()
    xml = workdir / "disk.xml"
    xml.write_text(ceph.header_xml(images["header"], images["payload-file"]))
    wrong = workdir / "wrong"
    wrong.write_bytes(b"not-the-passphrase")
    with QMPProxy(vm.qmp_path) as proxy:
        proc = run_cli("attach", f"unix:{proxy.path}", xml, *ceph.secret_args(workdir, wrong),
                       "--state-dir", state_dir, "--json", timeout=120)
        sent = proxy.executed()
    assert proc.returncode == 2, proc.stdout + proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["type"] == "PreflightError"
    assert reply["error"] == (f"preflight: the passphrase does not open the LUKS header on rbd rbd/{images['header']}; "
                              "nothing was sent to the VM")
    assert sent and not set(sent) & MUTATING, sent  # only queries reached QEMU
    assert_unchanged()


def test_cephx_header_without_the_key_is_refused(cephx: Ceph, vm: QemuProcess, monitor: Monitor,
                                                 assert_unchanged: Callable[[], None], state_dir: Path) -> None:
    """A wrong (well-formed) cephx key: preflight cannot read the header → exit 2, rbd's reason shown."""
    import base64

    images = cephx.detached_header()
    disk = hotluks.Disk.from_xml(cephx.header_xml(images["header"], images["payload-file"]))
    secrets = cephx.secrets()
    secrets["client.hotluks"] = base64.b64encode(bytes(28))  # not the key
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session, \
            pytest.raises(PreflightError) as info:
        session.attach(disk, secrets)
    assert info.value.exit_code == 2
    assert f"cannot read rbd rbd/{images['header']}" in str(info.value)
    assert_unchanged()


def test_header_cluster_down_refused_by_preflight(ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                                                  assert_unchanged: Callable[[], None], workdir: Path,
                                                  state_dir: Path) -> None:
    """The header's cluster is unreachable: preflight's ``rbd export`` gives up (client mount
    timeout 15 s) and hotluks refuses with exit 2 within ``--timeout``; nothing was sent."""
    import time

    images = ceph.detached_header()
    conf = ceph.client_conf(workdir / "dead.conf", dead=True)
    xml = workdir / "disk.xml"
    xml.write_text(ceph.header_xml(images["header"], images["payload-file"], conf=conf))
    started = time.monotonic()
    proc = run_cli("attach", f"unix:{vm.qmp_path}", xml, *ceph.secret_args(workdir), "--state-dir", state_dir,
                   "--json", "--timeout", "30", timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["type"] == "RbdReadError" and f"cannot read rbd rbd/{images['header']}" in reply["error"]
    assert took < 30, took
    assert_unchanged()


def test_unknown_header_image_is_refused(ceph: Ceph, vm: QemuProcess, monitor: Monitor,
                                         assert_unchanged: Callable[[], None], state_dir: Path) -> None:
    """A header image that does not exist: preflight says so with rbd's own words (exit 2)."""
    disk = hotluks.Disk.from_xml(ceph.header_xml("no-such-header", ceph.detached_header()["payload-file"]))
    with hotluks.connect(f"unix:{vm.qmp_path}", state_dir=state_dir) as session, \
            pytest.raises(PreflightError) as info:
        session.attach(disk, ceph.secrets())
    assert info.value.exit_code == 2
    assert str(info.value) == ("cannot read rbd rbd/no-such-header: rbd: error opening image no-such-header: "
                               "(2) No such file or directory")
    assert_unchanged()
