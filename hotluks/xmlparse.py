"""Parse a libvirt-style ``<disk>`` into :class:`hotluks.model.Disk`.

Hardened against hostile input: size limit, no DTD, no entity expansion, no
network. Every input is validated against ``xml/disk.rng``; semantic rules the
grammar cannot express are checked afterwards. Every error is an
:class:`~hotluks.errors.XMLError` naming the line.
"""

from __future__ import annotations

import functools
import os
import re
import stat
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from hotluks.errors import InvalidDisk, XMLError
from hotluks.model import (
    Address,
    Auth,
    Bus,
    DetachedHeader,
    Disk,
    DriveAddress,
    DriverOptions,
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

if TYPE_CHECKING:
    from lxml import etree

MAX_XML_BYTES = 256 * 1024
SUPPORTED_BUSES = ("virtio", "scsi", "usb")
BUS_BY_PREFIX = {"vd": "virtio", "sd": "scsi", "hd": "ide", "xvd": "xen", "ub": "usb"}
ADDRESS_TYPE_BY_BUS = {"virtio": "pci", "scsi": "drive", "usb": "usb"}
AUTH_SECRET_BY_PROTOCOL: dict[str, Literal["ceph", "iscsi"]] = {"rbd": "ceph", "iscsi": "iscsi"}


@functools.cache
def _schema() -> etree.RelaxNG:
    from lxml import etree

    with resources.files("hotluks.schema").joinpath("disk.rng").open("rb") as fh:
        return etree.RelaxNG(etree.parse(fh, _parser()))


def _parser() -> etree.XMLParser:
    from lxml import etree

    return etree.XMLParser(
        resolve_entities=False, no_network=True, load_dtd=False, dtd_validation=False,
        huge_tree=False, remove_comments=True, remove_pis=True,
    )


def read_disk_file(path: Path) -> Disk:
    """Read and parse a ``<disk>`` XML file (``-`` is not special here); only regular files.

    Opened non-blocking, so a FIFO or a device is refused instead of waiting for a writer.
    """
    shown = str(path).encode("utf-8", "backslashreplace").decode()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:  # ENOENT, EACCES, EISDIR, ENAMETOOLONG, ELOOP, ENOTDIR, ...
        raise InvalidDisk(f"{shown}: {(exc.strerror or str(exc)).lower()}") from None
    except (ValueError, UnicodeError):  # NUL byte, unencodable characters
        raise InvalidDisk(f"{shown}: not a usable file name") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            what = "is a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file (a <disk> is read from a file)"
            raise InvalidDisk(f"{shown}: {what}")
        if info.st_size > MAX_XML_BYTES:
            raise XMLError(f"input is {info.st_size} bytes; a <disk> must be under {MAX_XML_BYTES} bytes", source=shown)
        data = os.read(fd, MAX_XML_BYTES + 1)  # bounded even if the file grew meanwhile
    except OSError as exc:
        raise InvalidDisk(f"{shown}: {(exc.strerror or str(exc)).lower()}") from None
    finally:
        os.close(fd)
    return parse_disk(data, source=shown)


def parse_disk(data: str | bytes, *, source: str | None = None) -> Disk:
    """Parse ``<disk>`` XML text into a validated :class:`Disk`."""
    from lxml import etree

    if not isinstance(data, (str, bytes)):
        raise InvalidDisk(f"a <disk> is XML text or bytes, not {type(data).__name__}")
    try:
        raw = data.encode() if isinstance(data, str) else data
    except UnicodeEncodeError:
        raise XMLError("input is not valid Unicode text (lone surrogate)", source=source) from None
    if len(raw) > MAX_XML_BYTES:
        raise XMLError(f"input is {len(raw)} bytes; a <disk> must be under {MAX_XML_BYTES} bytes", source=source)
    if not raw.strip():
        raise XMLError("input is empty; expected a <disk> element", source=source)
    try:
        root = etree.fromstring(raw, _parser())
    except etree.XMLSyntaxError as exc:
        line = exc.lineno if exc.lineno else None
        message = " ".join(str(exc.msg).split())  # libxml2 messages may carry newlines
        raise XMLError(f"not well-formed XML: {message}", line=line, source=source) from None
    docinfo: Any = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        raise XMLError("DOCTYPE declarations (and so entities) are not allowed", line=1, source=source)
    if not isinstance(root.tag, str) or root.tag != "disk":
        raise XMLError(f"root element must be <disk>, not <{root.tag}>", line=_line(root), source=source)
    _explain_common_mistakes(root, source)
    schema = _schema()
    if not schema.validate(root):
        line, message = _locate_schema_error(root, schema.error_log)
        raise XMLError(f"does not match the <disk> schema: {message}", line=line, source=source)
    return _DiskBuilder(source).disk(root)


def _locate_schema_error(root: etree._Element, log: etree._ListErrorLog) -> tuple[int | None, str]:
    """The line and message of the first schema error.

    libxml2 reports a bad element inside an ``<interleave>`` as "Extra element X in
    interleave" without a line; find that element (under the context the next error
    names) and say what is wrong with it.
    """
    errors = list(log)
    first = errors[0]
    if first.line:
        return first.line, first.message
    match = re.match(r"Extra element (\S+) in interleave", first.message)
    if match is None:
        return next((e.line for e in errors if e.line), _line(root)), first.message
    tag = match.group(1)
    context = next((e.path for e in errors if e.path), None)
    found: Any = root.xpath(context) if context else []
    parent = found[0] if found and isinstance(found[0], type(root)) else root
    candidates = [child for child in parent if child.tag == tag] or list(root.iter(tag))
    if len(candidates) > 1:
        return _line(candidates[1]), f"<{tag}> may appear only once here"
    line = _line(candidates[0]) if candidates else _line(root)
    return line, (f"<{tag}> is not valid here: one of its attributes or children does not match the grammar "
                  "(see xml/disk.rng)")


def _explain_common_mistakes(root: etree._Element, source: str | None) -> None:
    """Friendlier messages than the schema's for mistakes people actually make."""
    for enc in root.iter("encryption"):
        if not any(child.tag == "secret" for child in enc):
            raise XMLError("<encryption> needs at least one <secret type='passphrase' uuid=…|usage=…/>",
                           line=_line(enc), source=source)
    target = root.find("target")
    if target is not None:
        bus = target.get("bus")
        if bus is not None and bus not in SUPPORTED_BUSES:
            raise XMLError(f"unsupported bus '{bus}' (hotluks plugs disks on {', '.join(SUPPORTED_BUSES)})",
                           line=_line(target), source=source)
    device = root.get("device", "disk")
    if device != "disk":
        raise XMLError(f"device='{device}' is not supported: hotluks attaches device='disk' only",
                       line=_line(root), source=source)


def _line(el: etree._Element) -> int | None:
    """The element's line (lxml-stubs leave ``sourceline`` untyped)."""
    return cast("int | None", el.sourceline)


def _number(el: etree._Element, attr: str, source: str | None) -> int:
    """An address number as libvirt reads it (C ``strtoul`` base 0): ``0x`` hex, leading ``0`` octal."""
    value = el.get(attr)
    if not value:
        return 0
    try:
        if value.startswith(("0x", "0X")):
            return int(value[2:], 16)
        if len(value) > 1 and value.startswith("0"):
            return int(value[1:], 8)
        return int(value, 10)
    except ValueError:
        raise XMLError(f"<{el.tag} {attr}='{value}'> is not a number (0x… is hex and, as in libvirt, "
                       "a leading 0 means octal)", line=_line(el), source=source) from None


class _DiskBuilder:
    """Turns a schema-valid element tree into the model, checking libvirt's semantics."""

    def __init__(self, source: str | None):
        self.where = source

    def fail(self, message: str, element: etree._Element) -> XMLError:
        return XMLError(message, line=_line(element), source=self.where)

    def disk(self, root: etree._Element) -> Disk:
        kind = cast(SourceKind, root.get("type"))
        source_el = _child(root, "source")
        source = self.source(source_el, kind, "disk")

        enc_els = [e for e in (root.find("encryption"), source_el.find("encryption")) if e is not None]
        if len(enc_els) > 1:
            later = max(enc_els, key=lambda e: _line(e) or 0)
            raise self.fail("<encryption> given both under <disk> and under <source>; keep one", later)
        driver_el = root.find("driver")
        fmt = cast(ImageFormat, driver_el.get("type", "raw") if driver_el is not None else "raw")
        encryption = self.encryption(enc_els[0], source, fmt) if enc_els else None

        target = _child(root, "target")
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
        alias_el = root.find("alias")
        serial_el = root.find("serial")
        return Disk(
            source=source,
            target_dev=dev,
            bus=cast(Bus, bus),
            format=fmt,
            encryption=encryption,
            driver=self.driver(driver_el),
            address=address,
            alias=alias_el.get("name") if alias_el is not None else None,
            serial=serial_el.text if serial_el is not None else None,
            readonly=root.find("readonly") is not None,
            shareable=root.find("shareable") is not None,
            removable=target.get("removable") == "on",
        )

    def infer_bus(self, dev: str, target: etree._Element) -> str:
        for prefix, bus in sorted(BUS_BY_PREFIX.items(), key=lambda kv: -len(kv[0])):
            if dev.startswith(prefix):
                return bus
        raise self.fail(f"cannot infer the bus from dev='{dev}'; add bus='virtio|scsi|usb'", target)

    def driver(self, el: etree._Element | None) -> DriverOptions:
        if el is None:
            return DriverOptions()
        cache = el.get("cache")
        io = el.get("io")
        if io == "native" and cache not in ("none", "directsync"):
            raise self.fail("io='native' needs cache='none' or cache='directsync' (O_DIRECT), as in libvirt", el)
        return DriverOptions(
            cache=None if cache == "default" else cache,
            discard=el.get("discard"),
            io=io,
            detect_zeroes=el.get("detect_zeroes"),
        )

    def source(self, el: etree._Element, kind: SourceKind, owner: str) -> Source:
        attr_for_kind = {"file": "file", "block": "dev", "network": "protocol"}
        wanted = attr_for_kind[kind]
        if el.get(wanted) is None:
            present = next((a for a in ("file", "dev", "protocol") if el.get(a) is not None), "?")
            raise self.fail(f"{owner} type='{kind}' needs <source {wanted}=…>, not <source {present}=…>", el)
        hosts = tuple(self.host(h) for h in el.findall("host"))
        auth_el = el.find("auth")
        config_el = el.find("config")
        if kind != "network":
            for extra in (auth_el, config_el, *el.findall("host")):
                if extra is not None:
                    raise self.fail(f"<{extra.tag}> only makes sense for a network source", extra)
            return Source(kind=kind, path=el.get(wanted), line=_line(el))

        protocol = el.get("protocol")
        name = el.get("name")
        if protocol == "rbd":
            path, at, snapshot = (name or "").partition("@")
            parts = path.split("/")
            if name is None or not 2 <= len(parts) <= 3 or "" in parts or (at and (not snapshot or "@" in snapshot)):
                raise self.fail("rbd source needs name='pool/image' or name='pool/namespace/image' "
                                "(optionally @snapshot)", el)
        elif protocol == "iscsi":
            if name is None or "/" not in name:
                raise self.fail("iscsi source needs name='IQN/LUN'", el)
            if not name.rsplit("/", 1)[1].isdigit():
                raise self.fail("iscsi source name must end with /LUN (a number)", el)
        if protocol in ("nbd", "iscsi") and not hosts:
            raise self.fail(f"{protocol} source needs a <host>", el)
        if protocol in ("nbd", "iscsi") and len(hosts) > 1:
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
        if protocol != "rbd" and config_el is not None:
            raise self.fail("<config file=…> is only for rbd sources", config_el)
        auth = None
        if auth_el is not None:
            if protocol not in AUTH_SECRET_BY_PROTOCOL:
                raise self.fail(f"<auth> is not supported for protocol '{protocol}'", auth_el)
            sec_el = _child(auth_el, "secret")
            expected = AUTH_SECRET_BY_PROTOCOL[str(protocol)]
            if sec_el.get("type") != expected:
                raise self.fail(f"{protocol} <auth> needs <secret type='{expected}'>", sec_el)
            auth = Auth(username=str(auth_el.get("username")), secret=self.secret_ref(sec_el, expected))
        for host in hosts:
            if host.socket is not None and protocol != "nbd":
                raise self.fail("a UNIX-socket <host> is only supported for nbd", el)
        return Source(
            kind=kind,
            protocol=cast(Any, protocol),
            name=name,
            hosts=hosts,
            auth=auth,
            config_file=config_el.get("file") if config_el is not None else None,
            line=_line(el),
            tls=tls,
            tls_hostname=el.get("tlsHostname"),
        )

    def host(self, el: etree._Element) -> Host:
        port = el.get("port")
        return Host(name=el.get("name"), port=int(port) if port else None, socket=el.get("socket"))

    def secret_ref(self, el: etree._Element, kind: Literal["passphrase", "ceph", "iscsi"]) -> SecretRef:
        uuid = el.get("uuid")
        if uuid is not None and "-" not in uuid:
            uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
        return SecretRef(kind=kind, uuid=uuid.lower() if uuid else None, usage=el.get("usage"))

    def encryption(self, el: etree._Element, source: Source, fmt: ImageFormat) -> Encryption:
        luks_format = LuksFormat(el.get("format"))
        engine = Engine(el.get("engine", "qemu"))
        secrets = tuple(self.secret_ref(s, "passphrase") for s in el.findall("secret"))
        if len(set(secrets)) != len(secrets):
            raise self.fail("the same secret is listed twice in <encryption>", el)
        header_el = el.find("header")
        header = None
        if header_el is not None:
            hkind = cast(SourceKind, header_el.get("type"))
            hsource_el = _child(header_el, "source")
            pin_el = header_el.find("fingerprint")
            pin = (pin_el.text or "").strip().lower() if pin_el is not None else None
            header = DetachedHeader(source=self.source(hsource_el, hkind, "header"), fingerprint=pin)
            if header.source.describe() == source.describe():
                raise self.fail(f"the detached header and the payload are the same volume ({source.describe()})",
                                hsource_el)

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
            return DriveAddress(controller=num("controller"), bus=num("bus"), target=num("target"), unit=num("unit"))
        return USBAddress(bus=num("bus"), port=el.get("port"))


def _child(el: etree._Element, tag: str) -> etree._Element:
    found = el.find(tag)
    if found is None:  # the schema guarantees it; keep mypy and hostile trees honest
        raise XMLError(f"<{el.tag}> needs a <{tag}>", line=_line(el))
    return found


__all__ = ["parse_disk", "read_disk_file", "MAX_XML_BYTES"]
