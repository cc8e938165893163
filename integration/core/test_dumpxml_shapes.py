"""`virsh dumpxml` disks of each shape, captured from a real libvirt domain, parse and plan.

libvirt itself attaches each disk (so its output carries the read-only state it adds:
``index``, ``<backingStore/>``, its own ``<alias>``, PCI addresses on root ports); hotluks
parses the dumped element, notes what it ignores, and plans it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from testsupport.libvirtd import TransientDomain, define_secret, qemu_accessible_dir, start_domain
from testsupport.libvirtd import libvirt_daemon as libvirt_daemon  # the shared fixtures
from testsupport.libvirtd import libvirt_uri as libvirt_uri

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
PASSPHRASE = b"dumpxml shapes"


@pytest.fixture
def dom(libvirt_uri: str) -> Iterator[TransientDomain]:
    with start_domain(libvirt_uri, paused=True, root_ports=6) as d:
        yield d


def _image(path: Path, fmt: str, encrypted: bool) -> None:
    opts = []
    if encrypted:
        opts = ["--object", f"secret,id=s0,data={PASSPHRASE.decode()}", "-o",
                "key-secret=s0,iter-time=10" if fmt == "luks" else
                "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10"]
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, *opts, str(path), "4M"], check=True, timeout=60)


def shapes(root: Path, uuid: str) -> dict[str, str]:
    enc = f"<encryption format='luks'><secret type='passphrase' uuid='{uuid}'/></encryption>"
    return {
        "luks-raw-iotune": f"""<disk type='file' device='disk'><driver name='qemu' type='raw'/>
            <source file='{root}/luks.img'/>{enc}<target dev='vdb' bus='virtio'/>
            <iotune><total_bytes_sec>10485760</total_bytes_sec><read_iops_sec>400</read_iops_sec></iotune>
            </disk>""",
        "qcow2-native": f"""<disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'
            discard='unmap' detect_zeroes='unmap' error_policy='report' rerror_policy='stop'/>
            <source file='{root}/enc.qcow2'>{enc}</source><target dev='vdc' bus='virtio'/>
            <serial>dump-qcow2</serial></disk>""",
        "scsi-plain": f"""<disk type='file' device='disk'><driver name='qemu' type='raw'/>
            <source file='{root}/plain.img'/><target dev='sdb' bus='scsi'/><readonly/>
            <address type='drive' controller='0' bus='0' target='0' unit='3'/></disk>""",
        "block-luks": f"""<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none'
            io='native'/><source dev='{{loop}}'/>{enc.replace(uuid, '{block_uuid}')}
            <target dev='vde' bus='virtio'/></disk>""",
        "virtio-blockio": f"""<disk type='file' device='disk'><driver name='qemu' type='raw' copy_on_read='on'/>
            <source file='{root}/tuned.img'/><target dev='vdd' bus='virtio'/>
            <blockio logical_block_size='512' physical_block_size='4096'/></disk>""",
    }


def test_dumpxml_disk_of_each_shape_parses(dom: TransientDomain) -> None:
    import libvirt

    with qemu_accessible_dir() as root:
        _image(root / "luks.img", "luks", True)
        _image(root / "enc.qcow2", "qcow2", True)
        _image(root / "plain.img", "raw", False)
        _image(root / "tuned.img", "raw", False)
        _image(root / "block.img", "luks", True)
        secret = define_secret(dom.uri, "volume", str(root / "luks.img"), PASSPHRASE)
        cleanups: list[Any] = []
        try:
            conn = libvirt.open(dom.uri)
            try:
                domain = conn.lookupByUUIDString(dom.uuid)
                wanted = shapes(root, secret.uuid)
                loop = _loop(root / "block.img")
                if loop is None:
                    del wanted["block-luks"]
                else:
                    block_secret = define_secret(dom.uri, "volume", loop, PASSPHRASE)
                    cleanups.append(block_secret.undefine)
                    cleanups.append(lambda: subprocess.run(["losetup", "-d", loop], capture_output=True))
                    wanted["block-luks"] = wanted["block-luks"].format(loop=loop, block_uuid=block_secret.uuid)
                for xml in wanted.values():
                    domain.attachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)
                dumped = etree.fromstring(domain.XMLDesc(0).encode())
            finally:
                conn.close()
        finally:
            secret.undefine()
            for cleanup in reversed(cleanups):
                cleanup()
        disks = {d.find("target").get("dev"): etree.tostring(d) for d in dumped.iter("disk")}
        assert set(disks) >= {"vdb", "vdc", "sdb", "vdd"}
        for dev, xml in disks.items():
            disk = Disk.from_xml(xml)
            plan = build_plan(disk)
            assert disk.target_dev == dev and plan.device_id == f"hl-{dev}"
            assert any("libvirt's own" in n for n in disk.notes), (xml, disk.notes)  # alias='virtio-diskN'
        luks = Disk.from_xml(disks["vdb"])
        assert luks.shape == "attached-luks" and dict(luks.iotune) == {"bps-total": 10485760, "iops-read": 400}
        assert any("index" in n for n in luks.notes) or any("backingStore" in n for n in luks.notes)
        qcow2 = Disk.from_xml(disks["vdc"])
        assert qcow2.shape == "qcow2-native" and qcow2.driver.error_policy == "report"
        scsi = build_plan(Disk.from_xml(disks["sdb"])).steps[-1].arguments
        assert (scsi["bus"], scsi["lun"]) == ("scsi0.0", 3)
        assert dict(Disk.from_xml(disks["vdd"]).blockio)["physical_block_size"] == 4096
        if "vde" in disks:
            block = Disk.from_xml(disks["vde"])
            assert block.source.kind == "block" and block.shape == "attached-luks"
            assert build_plan(block).steps[1].arguments["driver"] == "host_device"


def _loop(path: Path) -> str | None:
    """A loop device over ``path``, or None where loop devices are unavailable."""
    if shutil.which("losetup") is None:
        return None
    proc = subprocess.run(["losetup", "--find", "--show", str(path)], capture_output=True, text=True, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else None
