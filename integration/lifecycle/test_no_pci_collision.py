"""After hotluks plugs a disk into a libvirt domain, libvirt's own live hot-plug still works.

libvirt does not see monitor-added devices and hands out the lowest free PCI slot
(pc) or root port (q35); hotluks takes from the top, so `virsh attach-disk --live`
and `virsh attach-interface --live` find their address free.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport.libvirtd import define_secret, give_to_qemu, qemu_accessible_dir, start_domain
from testsupport.vms import make_disk, run_cli

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


@pytest.fixture
def bridge() -> Iterator[str]:
    """A host bridge for `virsh attach-interface … bridge` (libvirtd here has no network driver)."""
    name = f"hlbr{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", name], capture_output=True)


def virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-q", "-c", uri, *args], capture_output=True, text=True, timeout=60)


def monitor(uri: str, domain: str, command: str, **arguments: Any) -> Any:
    out = virsh(uri, "qemu-monitor-command", domain, json.dumps({"execute": command, "arguments": arguments}))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["return"]


def hotluks_device_address(uri: str, domain: str) -> tuple[str, int]:
    """(root port holding hl-vdb, or '' for the root bus; slot) as QEMU sees it.

    The root bus is in query-pci; a paused q35 VM's ports are unnumbered, so there QOM tells.
    """
    for dev in monitor(uri, domain, "query-pci")[0]["devices"]:
        if dev.get("qdev_id") == "hl-vdb":
            return "", int(dev["slot"])
    for port in ("pci.1", "pci.2", "pci.3", "pci.4"):
        for link in monitor(uri, domain, "qom-list", path=f"/machine/peripheral/{port}/{port}"):
            if link["name"].startswith("child[") and monitor(
                    uri, domain, "qom-get", path=f"/machine/peripheral/{port}/{port}",
                    property=link["name"]).endswith("/hl-vdb"):
                return port, 0
    raise AssertionError("hl-vdb not found")


@pytest.mark.parametrize("machine", ["pc", "q35"])
def test_libvirt_hotplug_after_hotluks(libvirt_uri: str, machine: str, bridge: str, tmp_path: Path) -> None:
    with qemu_accessible_dir() as workdir, start_domain(libvirt_uri, machine=machine, root_ports=4) as dom:
        disk = make_disk(workdir / "disks", "attached-luks", "vdb", "virtio")
        for path in disk.files:
            give_to_qemu(path)
        disk.secret_file.unlink()
        plain = workdir / "plain.raw"
        plain.write_bytes(b"")
        os.truncate(plain, 1024 * 1024)
        with define_secret(libvirt_uri, "volume", disk.secret_key, disk.passphrase):
            attached = run_cli("attach", dom.name, disk.xml_path, "--path", "qmp", "--connect", libvirt_uri,
                               "--state-dir", tmp_path / "state", "--json")
            assert attached.returncode == 0, attached.stderr
            where = hotluks_device_address(libvirt_uri, dom.name)
            added_disk = virsh(libvirt_uri, "attach-disk", dom.name, str(plain), "vdc", "--targetbus", "virtio",
                               "--live")
            added_nic = virsh(libvirt_uri, "attach-interface", dom.name, "bridge", bridge, "--model", "virtio",
                              "--live")
            live = virsh(libvirt_uri, "dumpxml", dom.name).stdout
            detached = run_cli("detach", dom.name, "--target", "vdb", "--connect", libvirt_uri,
                               "--state-dir", tmp_path / "state", "--timeout", "10")
        assert added_disk.returncode == 0, added_disk.stderr
        assert added_nic.returncode == 0, added_nic.stderr
        assert "<interface type='bridge'>" in live and "dev='vdc'" in live
        assert detached.returncode in (0, 1, 3), detached.stderr  # a paused pc guest cannot eject; q35 can
    # the top of the free range: slot 0x1f of pc's root bus; q35's last root port (pci.4, libvirt's index 4)
    assert where == (("", 0x1F) if machine == "pc" else ("pci.4", 0)), where


def test_persistent_definition_reservations_are_kept_free(libvirt_uri: str, tmp_path: Path) -> None:
    """A device added to the definition only (`--config`) at slot 0x1f keeps hotluks at 0x1e."""
    import libvirt
    from lxml import etree

    from testsupport.libvirtd import domain_xml

    name = f"hotluks-lc-{uuid.uuid4().hex[:8]}"
    with qemu_accessible_dir() as workdir:
        disk = make_disk(workdir / "disks", "attached-luks", "vdb", "virtio")
        for path in disk.files:
            give_to_qemu(path)
        spare = workdir / "spare.raw"
        spare.write_bytes(b"")
        os.truncate(spare, 1024 * 1024)
        reserved = workdir / "reserved.xml"
        reserved.write_text(f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
                            f"<source file='{spare}'/><target dev='vdz' bus='virtio'/>"
                            "<address type='pci' domain='0' bus='0' slot='0x1f' function='0'/></disk>")
        conn = libvirt.open(libvirt_uri)
        dom = conn.defineXML(etree.tostring(etree.fromstring(domain_xml(name, machine="pc", root_ports=0)),
                                            encoding="unicode"))
        try:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
            added = virsh(libvirt_uri, "attach-device", name, str(reserved), "--config")
            assert added.returncode == 0, added.stderr
            attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), "--path", "qmp", "--connect", libvirt_uri,
                               "--state-dir", tmp_path / "state")
            assert attached.returncode == 0, attached.stderr
            assert hotluks_device_address(libvirt_uri, name) == ("", 0x1E)
        finally:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
            conn.close()
