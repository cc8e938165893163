"""Build a :class:`hotluks.model.Disk` (any :class:`~hotluks.disktypes.DiskData`) from a schema-valid ``<disk>`` tree, checking libvirt's semantics.

Every refusal is an :class:`~hotluks.errors.XMLError` naming the line. What lies
beyond the source (tuning, ignored state, refused features) is in :mod:`hotluks.xmlextras`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

from hotluks import xmlextras as extras
from hotluks.disktypes import (
    CURL_PROTOCOLS,
    Address,
    Auth,
    Bus,
    DetachedHeader,
    DiskData,
    DriveAddress,
    Encryption,
    Engine,
    Host,
    ImageFormat,
    LuksFormat,
    PCIAddress,
    SecretRef,
    Source,
    SourceKind,
    USBAddress,
)
from hotluks.errors import XMLError

if TYPE_CHECKING:
    from lxml import etree

SUPPORTED_BUSES = ("virtio", "scsi", "usb")
BUS_BY_PREFIX = {"vd": "virtio", "sd": "scsi", "hd": "ide", "xvd": "xen", "ub": "usb"}
ADDRESS_TYPE_BY_BUS = {"virtio": "pci", "scsi": "drive", "usb": "usb"}
# libvirt names the secret of an http(s)/ftp(s) <auth> type='iscsi' too
AUTH_SECRET_BY_PROTOCOL: dict[str, Literal["ceph", "iscsi"]] = {
    "rbd": "ceph", "iscsi": "iscsi", "http": "iscsi", "https": "iscsi", "ftp": "iscsi", "ftps": "iscsi"}


def line_of(el: etree._Element) -> int | None:
    """The element's line (lxml-stubs leave ``sourceline`` untyped)."""
    return cast("int | None", el.sourceline)


def _number(el: etree._Element, attr: str, source: str | None) -> int:
    """An address number as libvirt reads it (C ``strtoul`` base 0): ``0x`` hex, leading ``0`` octal.

    ASCII digits only: Python's ``int`` would read ``'١٢'`` as 12, libvirt would not.
    """
    value = el.get(attr)
    if not value:
        return 0
    try:
        if not value.isascii():
            raise ValueError(value)
        if value.startswith(("0x", "0X")):
            return int(value[2:], 16)
        if len(value) > 1 and value.startswith("0"):
            return int(value[1:], 8)
        return int(value, 10)
    except ValueError:
        raise XMLError(f"<{el.tag} {attr}='{value}'> is not a number (0x… is hex and, as in libvirt, "
                       "a leading 0 means octal)", line=line_of(el), source=source) from None


D = TypeVar("D", bound=DiskData)


class DiskBuilder(Generic[D]):
    """Turns a schema-valid element tree into the model (a ``make``), checking libvirt's semantics."""

    def __init__(self, make: type[D], source: str | None):
        self.make = make
        self.where = source
        self.notes: list[str] = []

    def fail(self, message: str, element: etree._Element) -> XMLError:
        return XMLError(message, line=line_of(element), source=self.where)

    def disk(self, root: etree._Element) -> D:
        kind = cast(SourceKind, root.get("type"))
        source_el = child(root, "source")
        source = self.source(source_el, kind, "disk")

        enc_els = [e for e in (root.find("encryption"), source_el.find("encryption")) if e is not None]
        if len(enc_els) > 1:
            later = max(enc_els, key=lambda e: line_of(e) or 0)
            raise self.fail("<encryption> given both under <disk> and under <source>; keep one", later)
        driver_el = root.find("driver")
        fmt = cast(ImageFormat, driver_el.get("type", "raw") if driver_el is not None else "raw")
        encryption = self.encryption(enc_els[0], source, fmt, driver_el) if enc_els else None

        target = child(root, "target")
        dev = str(target.get("dev"))
        bus = target.get("bus") or self.infer_bus(dev, target)
        if bus not in SUPPORTED_BUSES:
            raise self.fail(f"bus '{bus}' (inferred from dev='{dev}') is not supported; use "
                            f"{', '.join(SUPPORTED_BUSES)}", target)
        header = encryption.header if encryption is not None else None
        for src in (source, header.source) if header is not None else (source,):
            if src.rbd_snapshot is not None and root.find("readonly") is None:
                raise XMLError(f"rbd snapshot '{src.rbd_snapshot}' is read-only: add <readonly/>",
                               line=src.line, source=self.where)
        if target.get("removable") == "on" and bus not in ("usb", "scsi"):
            raise self.fail(f"removable='on' is for usb and scsi disks (as in libvirt), not bus '{bus}'", target)
        address = self.address(root.find("address"), cast(Bus, bus))
        driver = extras.driver_options(driver_el, self.fail)
        extras.check_driver_for_bus(driver, bus, fmt, driver_el, self.fail, root)
        notes = extras.disk_notes_and_refusals(root, bus, self.fail)
        alias_el = root.find("alias")
        alias = alias_el.get("name") if alias_el is not None else None
        serial_el = root.find("serial")
        boot_el = root.find("boot")
        return self.make(
            source=source,
            target_dev=dev,
            bus=cast(Bus, bus),
            format=fmt,
            encryption=encryption,
            driver=driver,
            address=address,
            alias=alias if alias is not None and alias.startswith("ua-") else None,
            serial=serial_el.text if serial_el is not None else None,
            readonly=root.find("readonly") is not None,
            shareable=root.find("shareable") is not None,
            removable=target.get("removable") == "on",
            iotune=extras.iotune(root.find("iotune"), self.fail),
            blockio=extras.blockio(root.find("blockio"), self.fail),
            boot_order=(extras.uint_attr(boot_el, "order", self.fail, minimum=1, maximum=2**31 - 1)
                        if boot_el is not None else None),
            scsi_properties=extras.scsi_properties(root, self.fail),
            notes=(*self.notes, *notes),
        )

    def infer_bus(self, dev: str, target: etree._Element) -> str:
        for prefix, bus in sorted(BUS_BY_PREFIX.items(), key=lambda kv: -len(kv[0])):
            if dev.startswith(prefix):
                return bus
        raise self.fail(f"cannot infer the bus from dev='{dev}'; add bus='virtio|scsi|usb'", target)

    def source(self, el: etree._Element, kind: SourceKind, owner: str) -> Source:
        attr_for_kind = {"file": "file", "block": "dev", "network": "protocol", "volume": "pool", "nvme": "type",
                         "dir": "dir", "vhostuser": "path", "vhostvdpa": "dev"}
        wanted = attr_for_kind[kind]
        if el.get(wanted) is None:
            present = next((a for a in ("file", "dev", "protocol", "pool", "type", "dir", "path")
                            if el.get(a) is not None), "?")
            raise self.fail(f"{owner} type='{kind}' needs <source {wanted}=…>, not <source {present}=…>", el)
        self.notes.extend(extras.source_notes_and_refusals(el, self.fail))
        host_els = el.findall("host")
        if len(host_els) > extras.MAX_HOSTS:
            raise self.fail(f"{len(host_els)} <host> elements; at most {extras.MAX_HOSTS}", host_els[extras.MAX_HOSTS])
        hosts = tuple(self.host(h) for h in host_els)
        auth_el = el.find("auth")
        config_el = el.find("config")
        slice_ = self.slice(el.find("slices"))
        for path_attr in ("file", "dev", "dir", "path"):
            if el.get(path_attr) is not None:
                extras.check_path(str(el.get(path_attr)), el, self.fail)
        if config_el is not None:
            extras.check_path(str(config_el.get("file")), config_el, self.fail)
        if kind not in ("network", "nvme"):
            for extra in (auth_el, config_el, *el.findall("host"), el.find("address"), el.find("ssl"),
                          el.find("cookies")):
                if extra is not None:
                    raise self.fail(f"<{extra.tag}> only makes sense for a network source", extra)
            if kind == "volume":
                return Source(kind=kind, pool_volume=(str(el.get("pool")), str(el.get("volume"))), line=line_of(el),
                              slice=slice_, unsupported="type='volume' needs libvirt's storage pool to find the "
                              "volume; give its path as type='block' or type='file'")
            if kind in ("dir", "vhostuser", "vhostvdpa"):
                return Source(kind=kind, path=el.get(wanted), line=line_of(el),
                              unsupported=f"type='{kind}' disks are not LUKS block devices hotluks can plug")
            return Source(kind=kind, path=el.get(wanted), line=line_of(el), slice=slice_)
        if kind == "nvme":
            return self.nvme(el, slice_)
        return self.network(el, hosts, slice_)

    def network(self, el: etree._Element, hosts: tuple[Host, ...], slice_: tuple[int, int] | None) -> Source:
        """A ``type='network'`` source: its name, transport (hosts, TLS), auth and extras, checked in that order."""
        protocol = str(el.get("protocol"))
        name = el.get("name")
        unsupported = self.protocol_name(protocol, name, el)
        self.transport(protocol, hosts, el)
        config_el = el.find("config")
        if protocol != "rbd" and config_el is not None:
            raise self.fail("<config file=…> is only for rbd sources", config_el)
        auth = self.network_auth(el.find("auth"), protocol, unsupported)
        for host_el, host in zip(el.findall("host"), hosts):
            if host.socket is not None:
                if protocol != "nbd":
                    raise self.fail("a UNIX-socket <host> is only supported for nbd", el)
                extras.check_path(host.socket, host_el, self.fail)
        curl = protocol in CURL_PROTOCOLS
        for extra in (el.find("address"), None if curl else el.find("ssl"), None if curl else el.find("cookies")):
            if extra is not None and unsupported is None:
                raise self.fail(f"<{extra.tag}> does not belong in a {protocol} source", extra)
        if el.get("query") is not None and not curl:
            raise self.fail("query= is only for http(s)/ftp(s) sources", el)
        ssl_el = el.find("ssl")
        if ssl_el is not None and protocol not in ("https", "ftps"):
            raise self.fail(f"<ssl> is for https and ftps sources, not {protocol}", ssl_el)
        return Source(
            kind="network",
            protocol=cast(Any, protocol),
            name=name,
            hosts=hosts,
            auth=auth,
            config_file=config_el.get("file") if config_el is not None else None,
            line=line_of(el),
            tls=el.get("tls") == "yes",
            tls_hostname=el.get("tlsHostname"),
            slice=slice_,
            query=el.get("query"),
            ssl_verify=None if ssl_el is None else ssl_el.get("verify") == "yes",
            unsupported=unsupported,
        )

    def protocol_name(self, protocol: str, name: str | None, el: etree._Element) -> str | None:
        """Check ``name=`` for the protocol; return why the source is unsupported (or None)."""
        unsupported = None
        if protocol == "rbd":
            path, at, snapshot = (name or "").partition("@")
            parts = path.split("/")
            if name is None or not 2 <= len(parts) <= 3 or "" in parts or (at and (not snapshot or "@" in snapshot)):
                raise self.fail("rbd source needs name='pool/image' or name='pool/namespace/image' "
                                "(optionally @snapshot)", el)
        elif protocol == "iscsi":
            if name is None or "/" not in name:
                raise self.fail("iscsi source needs name='IQN/LUN'", el)
            lun = extras.ascii_uint(name.rsplit("/", 1)[1])
            if lun is None:
                raise self.fail("iscsi source name must end with /LUN (a number in ASCII digits)", el)
            if lun > extras.MAX_ISCSI_LUN:
                raise self.fail(f"iscsi LUN {lun} is out of range (0 to {extras.MAX_ISCSI_LUN})", el)
        elif protocol in CURL_PROTOCOLS:
            if not name:
                raise self.fail(f"{protocol} source needs name='path/on/the/server'", el)
            if el.find("cookies") is not None:
                unsupported = (f"line {line_of(el)}: <cookies> are not supported (libvirt hands them to QEMU as "
                               "secrets; hotluks has no place for their values)")
        elif protocol != "nbd":
            unsupported = (f"protocol='{protocol}' is not supported (hotluks attaches rbd, nbd, iscsi and "
                           "http(s)/ftp(s) network sources)")
        return unsupported

    def transport(self, protocol: str, hosts: tuple[Host, ...], el: etree._Element) -> None:
        """libvirt's host count per protocol, TLS (nbd only) and UNIX sockets (nbd only)."""
        if protocol in ("nbd", "iscsi", *CURL_PROTOCOLS) and not hosts:
            raise self.fail(f"{protocol} source needs a <host>", el)
        if protocol in ("nbd", "iscsi", *CURL_PROTOCOLS) and len(hosts) > 1:
            raise self.fail(f"{protocol} source takes exactly one <host> (libvirt's rule)", el.findall("host")[1])
        tls = el.get("tls") == "yes"
        if tls and protocol != "nbd":
            raise self.fail(f"tls='yes' is only supported for nbd (not {protocol}): hotluks would connect "
                            "without TLS, so it refuses", el)
        if el.get("tlsHostname") is not None and not tls:
            raise self.fail("tlsHostname needs tls='yes'", el)
        if tls and hosts and hosts[0].socket is not None and el.get("tlsHostname") is None:
            raise self.fail("tls='yes' over a UNIX socket needs tlsHostname='…' (the name in the server's "
                            "certificate)", el)

    def network_auth(self, auth_el: etree._Element | None, protocol: str, unsupported: str | None) -> Auth | None:
        """``<auth username=…><secret type=…/></auth>``, with the secret type the protocol takes."""
        if auth_el is None:
            return None
        if protocol not in AUTH_SECRET_BY_PROTOCOL and unsupported is None:
            raise self.fail(f"<auth> is not supported for protocol '{protocol}'", auth_el)
        sec_el = child(auth_el, "secret")
        expected = AUTH_SECRET_BY_PROTOCOL.get(protocol, "iscsi")
        if sec_el.get("type") != expected:
            raise self.fail(f"{protocol} <auth> needs <secret type='{expected}'>", sec_el)
        return Auth(username=str(auth_el.get("username")), secret=self.secret_ref(sec_el, expected))

    def nvme(self, el: etree._Element, slice_: tuple[int, int] | None) -> Source:
        addr = el.find("address")
        if addr is None:
            raise self.fail("an nvme source needs <address domain= bus= slot= function=/>", el)
        domain, bus, slot, function = (_number(addr, a, self.where) for a in ("domain", "bus", "slot", "function"))
        if domain > 0xFFFF or bus > 0xFF or slot > 0x1F or function > 7:
            raise self.fail("nvme PCI address out of range (domain ≤ 0xffff, bus ≤ 0xff, slot ≤ 0x1f, "
                            "function ≤ 7)", addr)
        namespace = extras.uint_attr(el, "namespace", self.fail, minimum=1, maximum=2**32 - 2)
        return Source(kind="nvme", nvme_device=f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}",
                      nvme_namespace=namespace, line=line_of(el), slice=slice_)

    def slice(self, el: etree._Element | None) -> tuple[int, int] | None:
        if el is None:
            return None
        sl = child(el, "slice")
        offset = extras.uint_attr(sl, "offset", self.fail, maximum=2**63 - 1)
        size = extras.uint_attr(sl, "size", self.fail, minimum=1, maximum=2**63 - 1)
        return int(offset or 0), int(size or 0)

    def host(self, el: etree._Element) -> Host:
        port = extras.uint_attr(el, "port", self.fail, minimum=1, maximum=65535)
        return Host(name=el.get("name"), port=port, socket=el.get("socket"))

    def secret_ref(self, el: etree._Element, kind: Literal["passphrase", "ceph", "iscsi"]) -> SecretRef:
        uuid = el.get("uuid")
        if uuid is not None and "-" not in uuid:
            uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
        return SecretRef(kind=kind, uuid=uuid.lower() if uuid else None, usage=el.get("usage"))

    def encryption(self, el: etree._Element, source: Source, fmt: ImageFormat,
                   driver_el: etree._Element | None) -> Encryption:
        luks_format = LuksFormat(el.get("format"))
        engine = Engine(el.get("engine", "qemu"))
        secret_els = el.findall("secret")
        if len(secret_els) > extras.MAX_LAYERS:
            raise self.fail(f"{len(secret_els)} secrets (clone layers); at most {extras.MAX_LAYERS}",
                            secret_els[extras.MAX_LAYERS])
        secrets = tuple(self.secret_ref(s, "passphrase") for s in secret_els)
        if len(set(secrets)) != len(secrets):
            raise self.fail("the same secret is listed twice in <encryption>", el)
        header_el = el.find("header")
        header = None
        if header_el is not None:
            hkind = cast(SourceKind, header_el.get("type"))
            hsource_el = child(header_el, "source")
            pin_el = header_el.find("fingerprint")
            pin = (pin_el.text or "").strip().lower() if pin_el is not None else None
            header = DetachedHeader(source=self.source(hsource_el, hkind, "header"), fingerprint=pin)
            if same_volume(header.source, source):
                raise self.fail(f"the detached header and the payload are the same volume ({source.describe()}; "
                                f"header written as {header.source.describe()})", hsource_el)

        if engine is Engine.LIBRBD:
            if not source.is_rbd:
                raise self.fail(f"engine='librbd' needs an rbd source, not {source.describe()}", el)
            if header is not None:
                raise self.fail("engine='librbd' keeps the LUKS header inside the RBD image; "
                                "<header> is only for engine='qemu'", header_el if header_el is not None else el)
        else:
            if luks_format is not LuksFormat.LUKS:
                raise self.fail(f"engine='qemu' supports LUKS1 only (format='luks'); format='{luks_format.value}' "
                                "needs engine='librbd' on an rbd source", el)
            if len(secrets) != 1:
                raise self.fail("engine='qemu' takes exactly one passphrase <secret> "
                                "(several secrets are librbd clone layers)", el)
            if header is None and fmt not in ("raw", "qcow2"):
                raise self.fail(f"LUKS encryption by QEMU needs a raw or qcow2 image, not <driver type='{fmt}'> "
                                "(as in libvirt)", driver_el if driver_el is not None else el)
        return Encryption(format=luks_format, engine=engine, secrets=secrets, header=header)

    def address(self, el: etree._Element | None, bus: Bus) -> Address | None:
        if el is None:
            return None
        kind = el.get("type")
        if kind != ADDRESS_TYPE_BY_BUS[bus]:
            raise self.fail(f"bus '{bus}' needs <address type='{ADDRESS_TYPE_BY_BUS[bus]}'>, not type='{kind}'", el)
        def num(attr: str) -> int:
            return _number(el, attr, self.where)

        if kind == "pci":
            addr = PCIAddress(domain=num("domain"), bus=num("bus"), slot=num("slot"), function=num("function"),
                              multifunction=el.get("multifunction") == "on")
            if addr.domain != 0 or addr.slot > 31 or addr.function > 7 or addr.bus > 255:
                raise self.fail("PCI address out of range (domain 0, bus ≤ 255, slot ≤ 31, function ≤ 7)", el)
            return addr
        if kind == "drive":
            drive = DriveAddress(controller=num("controller"), bus=num("bus"), target=num("target"),
                                 unit=num("unit"))
            if (drive.controller > extras.MAX_SCSI_CONTROLLER or drive.bus != 0
                    or drive.target > extras.MAX_SCSI_TARGET or drive.unit > extras.MAX_SCSI_LUN):
                raise self.fail(f"SCSI address out of range: QEMU's virtio-scsi takes bus 0, target ≤ "
                                f"{extras.MAX_SCSI_TARGET}, unit ≤ {extras.MAX_SCSI_LUN} (controller ≤ "
                                f"{extras.MAX_SCSI_CONTROLLER})", el)
            return drive
        usb_bus = num("bus")
        if usb_bus > 255:
            raise self.fail("USB bus out of range (≤ 255)", el)
        return USBAddress(bus=usb_bus, port=el.get("port"))


def same_volume(a: Source, b: Source) -> bool:
    """True when two sources name the same volume, however the path is written (``//``, ``.``, ``..``)."""
    if a.path is not None and b.path is not None:
        return extras.normalized_path(a.path) == extras.normalized_path(b.path)
    return a.describe() == b.describe()


def child(el: etree._Element, tag: str) -> etree._Element:
    found = el.find(tag)
    if found is None:  # the schema guarantees it; keep mypy and hostile trees honest
        raise XMLError(f"<{el.tag}> needs a <{tag}>", line=line_of(el))
    return found
