"""Which disks libvirt can express itself, and their libvirt ``<disk>`` XML (rendered from the model). Pure.

libvirt handles LUKS1 in QEMU's own driver (attached header, raw payload), qcow2-native
encryption, librbd encryption (also layered, one secret per layer) and plain disks. A
detached header (hotluks' ``<header>`` extension) it cannot express.
"""

from __future__ import annotations

from typing import Any

from hotluks.model import Disk, DriveAddress, PCIAddress, SecretRef, Source, USBAddress

NATIVE_SHAPES = ("plain", "attached-luks", "qcow2-native", "librbd", "librbd-layered")


def libvirt_expressible(disk: Disk) -> bool:
    """True when libvirt's own ``<disk>`` grammar describes ``disk`` completely."""
    return disk.shape in NATIVE_SHAPES


def _secret(parent: Any, ref: SecretRef) -> None:
    from lxml import etree

    attrs: dict[str, str] = {"type": str(ref.kind)}
    attrs.update({"uuid": ref.uuid} if ref.uuid is not None else {"usage": str(ref.usage)})
    etree.SubElement(parent, "secret", attrs)


def _source(parent: Any, src: Source) -> Any:
    from lxml import etree

    if src.kind == "file":
        return etree.SubElement(parent, "source", file=str(src.path))
    if src.kind == "block":
        return etree.SubElement(parent, "source", dev=str(src.path))
    el = etree.SubElement(parent, "source", protocol=str(src.protocol), name=str(src.name or ""))
    for host in src.hosts:
        attrs: dict[str, str]
        if host.socket is not None:
            attrs = {"transport": "unix", "socket": host.socket}
        else:
            attrs = {"name": str(host.name)}
            if host.port is not None:
                attrs["port"] = str(host.port)
        etree.SubElement(el, "host", attrs)
    if src.auth is not None:
        auth = etree.SubElement(el, "auth", username=src.auth.username)
        _secret(auth, src.auth.secret)
    if src.config_file:
        etree.SubElement(el, "config", file=src.config_file)
    return el


def _address(parent: Any, disk: Disk) -> None:
    from lxml import etree

    addr = disk.address
    if isinstance(addr, PCIAddress):
        attrs = {"type": "pci", "domain": f"{addr.domain:#06x}", "bus": f"{addr.bus:#04x}",
                 "slot": f"{addr.slot:#04x}", "function": f"{addr.function:#x}"}
        if addr.multifunction:
            attrs["multifunction"] = "on"
        etree.SubElement(parent, "address", attrs)
    elif isinstance(addr, DriveAddress):
        etree.SubElement(parent, "address", type="drive", controller=str(addr.controller), bus=str(addr.bus),
                         target=str(addr.target), unit=str(addr.unit))
    elif isinstance(addr, USBAddress):
        attrs = {"type": "usb", "bus": str(addr.bus)}
        if addr.port:
            attrs["port"] = addr.port
        etree.SubElement(parent, "address", attrs)


def libvirt_disk_xml(disk: Disk) -> str:
    """libvirt's ``<disk>`` for a :func:`libvirt_expressible` disk (encryption inside ``<source>``)."""
    from lxml import etree

    if not libvirt_expressible(disk):
        raise ValueError(f"libvirt cannot express a {disk.shape} disk")
    root = etree.Element("disk", type=disk.source.kind, device="disk")
    drv = {"name": "qemu", "type": disk.format}
    for attr, value in (("cache", disk.driver.cache), ("discard", disk.driver.discard), ("io", disk.driver.io),
                        ("detect_zeroes", disk.driver.detect_zeroes)):
        if value is not None:
            drv[attr] = value
    etree.SubElement(root, "driver", drv)
    source = _source(root, disk.source)
    enc = disk.encryption
    if enc is not None:
        attrs = {"format": enc.format.value}
        if enc.engine.value != "qemu":
            attrs["engine"] = enc.engine.value
        el = etree.SubElement(source, "encryption", attrs)
        for ref in enc.secrets:
            _secret(el, ref)
    target = {"dev": disk.target_dev, "bus": disk.bus}
    if disk.removable:
        target["removable"] = "on"
    etree.SubElement(root, "target", target)
    if disk.serial:
        etree.SubElement(root, "serial").text = disk.serial
    if disk.readonly:
        etree.SubElement(root, "readonly")
    if disk.shareable:
        etree.SubElement(root, "shareable")
    if disk.alias:
        etree.SubElement(root, "alias", name=disk.alias)
    _address(root, disk)
    return str(etree.tostring(root, encoding="unicode"))
