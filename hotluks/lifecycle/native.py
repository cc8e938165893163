"""Attach/detach through libvirt's own device API, for disks libvirt can express.

Then libvirt owns the disk's lifecycle: it shows in ``domblklist``/``dumpxml``, is
carried through save/restore, managedsave, snapshots and migration, and (with
``persistent``) is in the definition for the next start. The caller plans and
preflights first (as for a monitor attach); this module only talks to libvirt
(``virDomainAttachDeviceFlags``/``virDomainDetachDeviceFlags``) and checks the result
in the live XML. The operator uses it for ``attach --path libvirt-native`` (see
:mod:`hotluks.runner.native_path`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from hotluks.errors import BackendError, DetachTimeoutError, InputError, UnsupportedError
from hotluks.lifecycle.native_xml import libvirt_disk_xml, libvirt_expressible
from hotluks.model import Disk

PATH = "libvirt-native"


@dataclass(frozen=True)
class NativeAttachment:
    """What libvirt made of the disk: its alias and its block nodes (``libvirt-N-…``)."""

    vm: str
    target: str
    alias: str | None
    source_index: int | None
    persistent: bool
    path: str = PATH

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "vm": self.vm, "target": self.target, "alias": self.alias,
                "source-index": self.source_index, "persistent": self.persistent}


def live_disk(domain_xml: str, target: str) -> Any:
    """The ``<disk>`` element with ``<target dev=target>`` in a domain XML, or None. Pure."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(domain_xml.encode(), parser)
    for el in root.iterfind("devices/disk"):
        tgt = el.find("target")
        if tgt is not None and tgt.get("dev") == target:
            return el
    return None


def _attachment(domain: str, target: str, el: Any, persistent: bool) -> NativeAttachment:
    alias_el, source = el.find("alias"), el.find("source")
    index = source.get("index") if source is not None else None
    return NativeAttachment(domain, target, alias_el.get("name") if alias_el is not None else None,
                            int(index) if index is not None else None, persistent)


def _flags(libvirt: Any, persistent: bool) -> int:
    flags = int(libvirt.VIR_DOMAIN_AFFECT_LIVE)
    return flags | int(libvirt.VIR_DOMAIN_AFFECT_CONFIG) if persistent else flags


async def attach_native(disk: Disk, *, domain: str, uri: str, persistent: bool = False,
                        timeout: float = 30.0) -> NativeAttachment:
    """Attach ``disk`` to running ``domain`` through libvirt (and its definition when ``persistent``)."""

    if not libvirt_expressible(disk):
        raise UnsupportedError(f"target {disk.target_dev}: libvirt cannot express a {disk.shape} disk; "
                               "hotluks attaches it through the monitor")
    return await attach_native_xml(libvirt_disk_xml(disk), disk.target_dev, domain=domain, uri=uri,
                                   persistent=persistent, timeout=timeout)


async def attach_native_xml(xml: str, target: str, *, domain: str, uri: str, persistent: bool = False,
                            timeout: float = 30.0) -> NativeAttachment:
    """Attach libvirt's ``<disk>`` ``xml`` (target ``target``) to running ``domain``; checked in the live XML."""
    import libvirt

    def run() -> NativeAttachment:
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName(domain)
            if live_disk(dom.XMLDesc(0), target) is not None:
                raise InputError(f"domain {domain} already has a disk {target}")
            dom.attachDeviceFlags(xml, _flags(libvirt, persistent))
            el = live_disk(dom.XMLDesc(0), target)
            if el is None:
                raise BackendError(f"libvirt accepted disk {target} but it is not in {domain}'s live XML")
            return _attachment(domain, target, el, persistent)
        finally:
            conn.close()

    result: NativeAttachment = await _in_thread(run, timeout, f"attach of {target} to {domain}")
    return result


async def detach_native(target: str, *, domain: str, uri: str, persistent: bool = False,
                        timeout: float = 30.0) -> None:
    """Unplug libvirt's disk ``target`` and wait (bounded) until it has left the live XML."""
    import libvirt
    from lxml import etree

    def run() -> None:
        conn = libvirt.open(uri)
        try:
            dom = conn.lookupByName(domain)
            el = live_disk(dom.XMLDesc(0), target)
            if el is None:
                raise InputError(f"domain {domain} has no disk {target}")
            dom.detachDeviceFlags(etree.tostring(el, encoding="unicode"), _flags(libvirt, persistent))
            deadline = time.monotonic() + timeout
            while live_disk(dom.XMLDesc(0), target) is not None:
                if time.monotonic() > deadline:
                    raise DetachTimeoutError(f"the guest of {domain} did not release {target} within {timeout:.0f}s; "
                                             "libvirt keeps the unplug request pending")
                time.sleep(0.1)
        finally:
            conn.close()

    await _in_thread(run, timeout + 10, f"detach of {target} from {domain}")


async def _in_thread(fn: Any, timeout: float, what: str) -> Any:
    import libvirt

    try:
        async with asyncio.timeout(timeout):
            return await asyncio.to_thread(fn)
    except TimeoutError:
        raise BackendError(f"{what}: no answer from libvirt within {timeout:.0f}s") from None
    except libvirt.libvirtError as exc:
        raise BackendError(f"{what}: {exc.get_error_message() or exc}") from None
