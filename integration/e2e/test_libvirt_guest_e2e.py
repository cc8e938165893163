"""End to end through libvirt: a libvirt domain boots the tiny guest, hotluks plugs disks in.

The passphrase comes from a libvirt secret, the monitor only sees it sealed with the
domain's masterKey0, the guest hashes exactly the host plaintext, detach completes through
the guest's DEVICE_DELETED, and the domain's nodes/objects/devices (read with plain
`virsh qemu-monitor-command`, independent of hotluks) return to their initial state.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import hotluks
from hotluks.demo.guest.agent import SyncGuestAgent
from hotluks.demo.guest.build import GuestArtifacts
from hotluks.demo.guest.vm import libvirt_boot_options
from testsupport.libvirtd import (
    LibvirtDaemon,
    TransientDomain,
    define_secret,
    give_to_qemu,
    qemu_accessible_dir,
    start_domain,
    start_libvirtd,
)
from testsupport.vms import PASSPHRASE, PATTERN, PATTERN_LEN, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
PAYLOAD_MB = 1


@pytest.fixture(scope="module")
def daemon() -> Iterator[LibvirtDaemon]:
    d = start_libvirtd()
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def files() -> Iterator[Path]:
    with qemu_accessible_dir() as path:
        yield path


@pytest.fixture(scope="module")
def domain(daemon: LibvirtDaemon, guest_artifacts: GuestArtifacts, files: Path) -> Iterator[TransientDomain]:
    kernel, initrd = files / guest_artifacts.kernel.name, files / guest_artifacts.initrd.name
    for src, dst in ((guest_artifacts.kernel, kernel), (guest_artifacts.initrd, initrd)):
        shutil.copyfile(src, dst)
        give_to_qemu(dst)
    local = guest_artifacts.__class__(guest_artifacts.kernel_version, kernel, initrd,
                                      guest_artifacts.modules, guest_artifacts.bzimage)
    options = libvirt_boot_options(local, files / "agent.sock")  # machine pc: ACPI hotplug on pci.0
    with start_domain(daemon.uri, paused=False, root_ports=0, **options) as dom:
        yield dom


@pytest.fixture(scope="module")
def agent(domain: TransientDomain, files: Path) -> Iterator[SyncGuestAgent]:
    with SyncGuestAgent(files / "agent.sock", timeout=30) as a:
        a.wait_ready(120)
        yield a


def virsh_snapshot(uri: str, name: str) -> tuple[frozenset[str], ...]:
    def qmp(cmd: dict[str, object]) -> object:
        out = subprocess.run(["virsh", "-c", uri, "qemu-monitor-command", name, json.dumps(cmd)],
                             capture_output=True, text=True, check=True, timeout=30).stdout
        return json.loads(out)["return"]

    nodes = qmp({"execute": "query-named-block-nodes", "arguments": {"flat": True}})
    objs = qmp({"execute": "qom-list", "arguments": {"path": "/objects"}})
    devs = qmp({"execute": "qom-list", "arguments": {"path": "/machine/peripheral"}})
    kids = (lambda xs: frozenset(x["name"] for x in xs if str(x["type"]).startswith("child<")))  # noqa: E731
    return (frozenset(n["node-name"] for n in nodes), kids(objs), kids(devs))  # type: ignore[index,union-attr]


@pytest.mark.parametrize(("shape", "bus", "via"), [
    ("detached-header-raw", "virtio", "cli"),
    ("detached-header-qcow2", "scsi", "api"),
    ("attached-luks", "virtio", "virsh"),
])
def test_libvirt_guest_reads_plaintext(daemon: LibvirtDaemon, domain: TransientDomain, agent: SyncGuestAgent,
                                       files: Path, shape: str, bus: str, via: str,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    work = files / f"{shape}-{bus}"
    target = "vdb" if bus == "virtio" else "sdb"
    serial = f"lv-{shape[:12]}"
    disk = make_disk(work, shape, target, bus, payload_mb=PAYLOAD_MB, address=f"<serial>{serial}</serial>")
    for path in [work, *disk.files]:
        give_to_qemu(path)
    state = files / f"state-{via}"
    before = virsh_snapshot(daemon.uri, domain.name)
    with define_secret(daemon.uri, "volume", disk.secret_key, PASSPHRASE):
        if via == "cli":
            proc = run_cli("attach", domain.name, disk.xml_path, "--path", "qmp", "--connect", daemon.uri, "--state-dir", state,
                           "--json")
            assert proc.returncode == 0, proc.stderr
            assert json.loads(proc.stdout)["device"] == disk.device
        else:
            backend = "virsh" if via == "virsh" else None
            with hotluks.connect(domain.name, uri=daemon.uri, state_dir=state, backend=backend) as vm:
                assert vm.backend_name == (via if via == "virsh" else "libvirt")
                assert vm.seals_secrets  # libvirt's masterKey0: the monitor only sees ciphertext
                vm.attach(disk.disk(), path="qmp")

    dev = agent.wait_for_device(serial, timeout=20)
    expected = bytes([PATTERN]) * PATTERN_LEN + bytes(PAYLOAD_MB * 1024 * 1024 - PATTERN_LEN)
    assert agent.sha256(dev.name) == hashlib.sha256(expected).hexdigest()

    proc = run_cli("detach", domain.name, "--target", target, "--connect", daemon.uri, "--state-dir", state,
                   "--timeout", "20", *(["--backend", "virsh"] if via == "virsh" else []))
    assert proc.returncode == 0, proc.stderr
    agent.wait_device_gone(serial, timeout=10)
    assert virsh_snapshot(daemon.uri, domain.name) == before
    out, err = capfd.readouterr()
    assert not leaks(PASSPHRASE, [out, err])
    log = Path(f"/var/log/libvirt/qemu/{domain.name}.log")
    if log.exists():
        assert not leaks(PASSPHRASE, [log.read_bytes()])
