"""libvirt lifecycle operations on a domain with a hotluks disk: refused up front, the VM keeps running.

A real guest in a persistent libvirt domain (with a libvirt-known qcow2 disk, so that
internal snapshots are possible at all) gets a detached-header disk from hotluks. libvirt
cannot carry that disk through save/restore, managedsave/start or snapshot revert, so
hotluks' migration guard makes QEMU refuse `virsh save`, `virsh managedsave` and
`virsh snapshot-create-as` before anything happens: each fails, the domain still runs,
and the guest still reads the same sha256 from the disk. After `hotluks detach` the guard
is gone and `virsh save` + `virsh restore` work again (the control). `virsh destroy` +
`virsh start` cannot be refused: the domain starts again, without the disk.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.guest.agent import SyncGuestAgent
from hotluks.guest.build import GuestArtifacts
from hotluks.guest.vm import libvirt_boot_options
from hotluks.testing.libvirtd import (
    QEMU_LOG_DIR,
    define_secret,
    domain_xml,
    give_to_qemu,
    qemu_accessible_dir,
)
from hotluks.testing.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
SERIAL = "hl-guarded"


def virsh(uri: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, timeout=timeout)


def monitor(uri: str, name: str, command: str, **arguments: Any) -> Any:
    out = virsh(uri, "qemu-monitor-command", name, json.dumps({"execute": command, "arguments": arguments}))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["return"]


def state(uri: str, name: str) -> str:
    return virsh(uri, "domstate", name).stdout.strip()


@pytest.fixture
def files() -> Iterator[Path]:
    with qemu_accessible_dir() as path:
        yield path


@pytest.fixture
def persistent_guest(libvirt_uri: str, guest_artifacts: GuestArtifacts, files: Path) -> Iterator[str]:
    """A defined, running pc domain booting the tiny guest, with a 16 MiB qcow2 vda libvirt knows."""
    import libvirt
    from lxml import etree

    kernel, initrd = files / guest_artifacts.kernel.name, files / guest_artifacts.initrd.name
    for src, dst in ((guest_artifacts.kernel, kernel), (guest_artifacts.initrd, initrd)):
        shutil.copyfile(src, dst)
        give_to_qemu(dst)
    local = guest_artifacts.__class__(guest_artifacts.kernel_version, kernel, initrd,
                                      guest_artifacts.modules, guest_artifacts.bzimage)
    vda = files / "vda.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(vda), "16M"], check=True)
    name = f"hotluks-lc-{uuid.uuid4().hex[:8]}"
    root = etree.fromstring(domain_xml(name, root_ports=0, **libvirt_boot_options(local, files / "agent.sock")))
    disk = etree.SubElement(root.find("devices"), "disk", type="file", device="disk")  # type: ignore[arg-type]
    etree.SubElement(disk, "driver", name="qemu", type="qcow2")
    etree.SubElement(disk, "source", file=str(vda))
    etree.SubElement(disk, "target", dev="vda", bus="virtio")
    conn = libvirt.open(libvirt_uri)
    dom = conn.defineXML(etree.tostring(root, encoding="unicode"))
    try:
        dom.create()
        yield name
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                          | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        conn.close()
        (QEMU_LOG_DIR / f"{name}.log").unlink(missing_ok=True)


def test_save_managedsave_snapshot_refused_while_guarded(libvirt_uri: str, persistent_guest: str, files: Path,
                                                         tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    name = persistent_guest
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    work = files / "disk"
    disk = make_disk(work, "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    for path in [work, *disk.files]:
        give_to_qemu(path)
    disk.secret_file.unlink()
    agent = SyncGuestAgent(files / "agent.sock", timeout=30)
    try:
        agent.wait_ready(180)
        with define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
            attached = run_cli("attach", name, disk.xml_path, *common, "--json")
        assert attached.returncode == 0, attached.stderr
        dev = agent.wait_for_device(SERIAL, timeout=20)
        before = agent.sha256(dev.name)
        reasons = monitor(libvirt_uri, name, "query-migrate").get("blocked-reasons", [])
        assert any("hlg-vdb" in r for r in reasons), reasons

        saved = tmp_path / "saved.img"
        refused = {
            "save": virsh(libvirt_uri, "save", name, str(saved)),
            "managedsave": virsh(libvirt_uri, "managedsave", name),
            "snapshot": virsh(libvirt_uri, "snapshot-create-as", name, "s1"),
        }
        for what, proc in refused.items():
            assert proc.returncode != 0, f"{what} was not refused: {proc.stdout}"
            assert "hlg-vdb" in proc.stderr, f"{what}: {proc.stderr}"
            assert state(libvirt_uri, name) == "running", what
        assert not saved.exists()
        assert "no" in virsh(libvirt_uri, "dominfo", name).stdout.split("Managed save:")[1].split("\n")[0]
        assert virsh(libvirt_uri, "snapshot-list", name, "--name").stdout.strip() == ""
        agent.command("drop-caches")
        assert agent.sha256(dev.name) == before  # the guest still reads the same disk

        detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "20")
        assert detached.returncode == 0, detached.stderr
        agent.wait_device_gone(SERIAL, timeout=10)
        assert monitor(libvirt_uri, name, "query-migrate").get("blocked-reasons", []) == []
        assert not any(n["node-name"].startswith("hlg-")
                       for n in monitor(libvirt_uri, name, "query-named-block-nodes", flat=True))
        agent.close()

        # the control: without the hotluks disk, libvirt's save/restore works
        assert virsh(libvirt_uri, "save", name, str(saved)).returncode == 0
        restored = virsh(libvirt_uri, "restore", str(saved))
        assert restored.returncode == 0, restored.stderr
        assert state(libvirt_uri, name) == "running"
        agent = SyncGuestAgent(files / "agent.sock", timeout=30)
        agent.wait_ready(60)
    finally:
        agent.close()
    out, err = capfd.readouterr()
    assert not leaks(PASSPHRASE, [out, err, attached.stdout, attached.stderr])


def test_destroy_start_is_not_blocked(libvirt_uri: str, persistent_guest: str, files: Path, tmp_path: Path) -> None:
    """destroy cannot be refused; the guarded domain starts again (without the disk)."""
    name = persistent_guest
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    disk = make_disk(files / "disk", "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    for path in [files / "disk", *disk.files]:
        give_to_qemu(path)
    attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common)
    assert attached.returncode == 0, attached.stderr
    assert virsh(libvirt_uri, "destroy", name).returncode == 0
    started = virsh(libvirt_uri, "start", name)
    assert started.returncode == 0, started.stderr
    assert state(libvirt_uri, name) == "running"
    nodes = {n["node-name"] for n in monitor(libvirt_uri, name, "query-named-block-nodes", flat=True)}
    assert not any(n.startswith(("hl-", "hlg-")) for n in nodes), nodes
