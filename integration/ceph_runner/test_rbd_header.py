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
from hotluks.demo.qemu.launcher import QemuProcess
from hotluks.errors import PreflightError
from testsupport.qmpproxy import MUTATING, QMPProxy
from testsupport.vms import PATTERN, PATTERN_LEN, Monitor, leaks, qemu_io_read, run_cli

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
    assert qemu_io_read(monitor, vm, result["top_node"]) == "ok"
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
    assert reply["error"]["type"] == "PreflightFailed"
    assert reply["error"]["message"] == (f"preflight: the passphrase does not open the LUKS header on rbd rbd/{images['header']}; "
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
    """The header's cluster is unreachable: preflight's ``rbd export`` gives up (its client mount
    timeout follows ``--timeout``, at most 15 s) and hotluks refuses with exit 2; nothing was sent."""
    import time

    images = ceph.detached_header()
    conf = ceph.client_conf(workdir / "dead.conf", dead=True)
    xml = workdir / "disk.xml"
    xml.write_text(ceph.header_xml(images["header"], images["payload-file"], conf=conf))
    started = time.monotonic()
    proc = run_cli("attach", f"unix:{vm.qmp_path}", xml, *ceph.secret_args(workdir), "--state-dir", state_dir,
                   "--json", "--timeout", "4", timeout=120)
    took = time.monotonic() - started
    assert proc.returncode == 2, proc.stdout + proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["error"]["type"] == "RbdReadError" and f"cannot read rbd rbd/{images['header']}" in reply["error"]["message"]
    assert took < 12, took  # 4 s mount timeout + rbd and hotluks start-up, not rbd's 15 s
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


@pytest.mark.libvirt
def test_libvirt_cephx_header_and_payload_in_rbd_with_libvirt_secrets(cephx: Ceph, libvirt_uri: str,
                                                                       state_dir: Path, passphrase: bytes) -> None:
    """libvirt domain, header and payload in RBD behind cephx, monitors as ``<host>``: preflight reads
    the header with the Ceph key libvirt holds (decoded; hotluks re-encodes it for ``rbd --keyfile``),
    QEMU reads the plaintext, detach restores the domain."""
    import asyncio
    import base64
    import contextlib

    from hotluks.backends.select import open_backend
    from hotluks.runner.operator import Operator
    from testsupport.libvirtd import QEMU_LOG_DIR, define_secret, start_domain

    images = cephx.detached_header()
    disk = hotluks.Disk.from_xml(cephx.header_xml(images["header"], images["payload-rbd"], payload_in_rbd=True,
                                                  hosts=True))
    with start_domain(libvirt_uri) as domain, contextlib.ExitStack() as stack:
        stack.enter_context(define_secret(libvirt_uri, "volume", "hotluks-ceph-runner-pass", passphrase))
        stack.enter_context(define_secret(libvirt_uri, "ceph", "client.hotluks",
                                          base64.b64decode(cephx.cluster.client_key)))
        log = QEMU_LOG_DIR / f"{domain.name}.log"

        async def main() -> None:
            async with await open_backend(domain.name, uri=domain.uri, backend="libvirt", timeout=60) as backend:
                async def names() -> tuple[frozenset[str], ...]:
                    nodes = await backend.execute("query-named-block-nodes", {"flat": True})
                    objs = await backend.execute("qom-list", {"path": "/objects"})
                    devs = await backend.execute("qom-list", {"path": "/machine/peripheral"})
                    return (frozenset(n["node-name"] for n in nodes),
                            frozenset(o["name"] for o in objs if o["type"].startswith("child<")),
                            frozenset(d["name"] for d in devs if d["type"].startswith("child<")))

                before = await names()
                op = Operator(backend, state_dir=state_dir)
                result = await op.attach(disk, {})
                assert result.preflight == f"header on rbd rbd/{images['header']} opens with the passphrase"
                mark = log.stat().st_size
                await backend.execute("human-monitor-command", {
                    "command-line": f'qemu-io {result.top_node} "read -P {PATTERN:#x} 0 {PATTERN_LEN}"'})
                for _ in range(500):
                    text = log.read_bytes()[mark:].decode(errors="replace")
                    if f"read {PATTERN_LEN}/{PATTERN_LEN} bytes" in text or "verification failed" in text:
                        break
                    await asyncio.sleep(0.02)
                assert f"read {PATTERN_LEN}/{PATTERN_LEN} bytes" in text and "verification failed" not in text, text

                await op.detach("vdc", timeout=20)
                assert await names() == before

        asyncio.run(asyncio.wait_for(main(), 120))
        assert not leaks(passphrase, [log.read_bytes()])
