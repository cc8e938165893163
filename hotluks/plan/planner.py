"""The pure planner: :class:`Disk` (+ capabilities + VM facts) → :class:`Plan`.

Block graphs follow libvirt and QEMU's documentation:

- attached LUKS (engine qemu, raw):  protocol → ``luks``
- qcow2-native (engine qemu, qcow2): protocol → ``qcow2`` with ``encrypt``
- detached header (engine qemu):     header protocol → raw; payload protocol → raw|qcow2;
                                     ``luks`` over the payload format with ``header``
- librbd:                            ``rbd`` with ``encrypt`` (nested ``parent`` per layer) → raw|qcow2
- no encryption:                     protocol → raw|qcow2

Secret objects come first, then nodes bottom-up, then the device.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from hotluks.errors import CapabilityError, ConflictError, InputError, UnsupportedError
from hotluks.model import CURL_PROTOCOLS, Disk, DriveAddress, Engine, LuksFormat, PCIAddress, Source, USBAddress
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.names import Namer
from hotluks.plan.steps import Plan, SecretBinding, Step
from hotluks.xmlextras import normalized_path, path_problem

CACHE_MODES: dict[str, tuple[bool, bool, bool]] = {
    # mode: (cache.direct, cache.no-flush, device write-cache)
    "none": (True, False, True),
    "writethrough": (False, False, False),
    "writeback": (False, False, True),
    "directsync": (True, False, False),
    "unsafe": (False, True, True),
}
DEVICE_DRIVERS = {"virtio": "virtio-blk-pci", "scsi": "scsi-hd", "usb": "usb-storage"}
#: libvirt error_policy → QEMU werror/rerror
ERROR_ACTIONS = {"stop": "stop", "report": "report", "ignore": "ignore", "enospace": "enospc"}


@dataclass(frozen=True)
class PlanContext:
    """Facts about the running VM that placement and conflict checks need."""

    #: node names, object ids and device ids already present in the VM
    existing_names: frozenset[str] = field(default_factory=frozenset)
    #: where to plug a virtio disk without an <address> (a free hot-pluggable bus)
    pci_bus: str | None = None
    #: the slot on ``pci_bus`` (chosen from the top of the free range); None: QEMU picks
    pci_slot: int | None = None
    #: the PCI root bus name, for <address bus='0'> ("pcie.0" on q35, "pci.0" on pc)
    pci_root_bus: str = "pci.0"
    #: a SCSI bus for disks without an <address> ("scsi0.0")
    scsi_bus: str | None = None
    #: x509 client credentials (ca-cert.pem, client-cert.pem, client-key.pem) for nbd tls='yes';
    #: libvirt's qemu.conf nbd_tls_x509_cert_dir (see hotluks.headers.tls.nbd_tls_dir)
    nbd_tls_dir: str = "/etc/pki/qemu"


def build_plan(disk: Disk, capabilities: Capabilities | None = None, context: PlanContext | None = None) -> Plan:
    """Return the ordered steps that attach ``disk``. Pure: no I/O."""
    caps = capabilities or Capabilities()
    ctx = context or PlanContext()
    check_sources(disk)
    check_capabilities(disk, caps)
    plan = _GraphBuilder(disk, ctx.nbd_tls_dir).build(ctx)
    clashes = sorted(set(plan.node_names + plan.object_ids + (plan.device_id,)) & ctx.existing_names)
    if clashes:
        raise ConflictError(
            f"target {disk.target_dev}: the VM already has {', '.join(clashes)}; "
            "is this disk already attached? (see `hotluks status`)"
        )
    return plan


def check_sources(disk: Disk) -> None:
    """Refuse sources no plan can use, also for a :class:`Disk` built without XML (the API)."""
    for src in disk.sources():
        where = f"line {src.line}: " if src.line else ""
        if src.unsupported is not None:
            raise UnsupportedError(src.unsupported if src.unsupported.startswith("line ") else
                                   f"{where}{src.unsupported}")
        if src.protocol in CURL_PROTOCOLS and not disk.readonly:
            raise UnsupportedError(f"{where}QEMU reads {src.protocol} sources read-only: add <readonly/>")
        for path in (src.path, src.config_file, *(h.socket for h in src.hosts)):
            problem = path_problem(path) if path is not None else None
            if problem is not None:
                raise InputError(f"{where}{problem}")
    enc = disk.encryption
    if enc is not None and enc.header is not None:
        payload, header = disk.source, enc.header.source
        if payload.path is not None and header.path is not None and \
                normalized_path(payload.path) == normalized_path(header.path):
            raise InputError(f"the detached header {header.path} and the payload {payload.path} are the same "
                             "file")


def check_capabilities(disk: Disk, caps: Capabilities) -> None:
    """Refuse up front what this QEMU cannot do, naming the requirement."""
    enc = disk.encryption
    for src in disk.sources():
        driver = _protocol_driver(src)
        if not caps.has_driver(driver):
            raise CapabilityError(f"this QEMU ({caps.version_text}) has no '{driver}' block driver "
                                  f"(needed for {src.describe()}; install qemu-block-extra)")
    for needed, why in (("throttle", disk.iotune), ("copy-on-read", disk.driver.copy_on_read)):
        if why and not caps.has_driver(needed):
            raise CapabilityError(f"this QEMU ({caps.version_text}) has no '{needed}' block driver")
    if enc is None:
        return
    if enc.header is not None and not caps.luks_detached_header:
        raise CapabilityError(
            f"a detached LUKS header needs QEMU ≥ 9.0 (BlockdevOptionsLUKS.header); this QEMU is {caps.version_text}")
    if enc.engine is Engine.LIBRBD:
        if enc.format.value not in caps.rbd_encrypt_formats:
            raise CapabilityError(f"librbd encryption format '{enc.format.value}' is not supported by this QEMU "
                                  f"({caps.version_text}); needs RbdImageEncryptionFormat '{enc.format.value}'")
        if len(enc.secrets) > 1 and not caps.rbd_encrypt_parent:
            raise CapabilityError(f"layered librbd encryption ({len(enc.secrets)} secrets) needs QEMU ≥ 8.0 with "
                                  f"'parent' in RbdEncryptionOptions; this QEMU is {caps.version_text}")


def _protocol_driver(src: Source) -> str:
    if src.kind == "file":
        return "file"
    if src.kind == "block":
        return "host_device"
    if src.kind == "nvme":
        return "nvme"
    return str(src.protocol)


def _hex(n: int) -> str:
    return f"0x{n:x}"


class _GraphBuilder:
    """Builds the steps for one disk; one instance per plan."""

    def __init__(self, disk: Disk, nbd_tls_dir: str = "/etc/pki/qemu"):
        self.disk = disk
        self.names = Namer(disk.target_dev, disk.alias)
        self.steps: list[Step] = []
        self.nbd_tls_dir = nbd_tls_dir
        self.tls_id: str | None = None

    # -- steps -----------------------------------------------------------------
    def secret(self, role: str, binding: SecretBinding, index: int | None = None) -> str:
        obj_id = self.names.name(role, index)
        args: dict[str, Any] = {"qom-type": "secret", "id": obj_id}
        self.steps.append(Step("secret", role, "object-add", args, "object-del", {"id": obj_id}, binding))
        return obj_id

    def node(self, role: str, args: dict[str, Any]) -> str:
        name = self.names.name(role)
        full = {"node-name": name, **args}
        if args.get("driver") == "qcow2" and self.disk.driver.discard_no_unref is not None:
            full["discard-no-unref"] = self.disk.driver.discard_no_unref
        self.steps.append(Step("node", role, "blockdev-add", full, "blockdev-del", {"node-name": name}))
        return name

    # -- graph -----------------------------------------------------------------
    def build(self, ctx: PlanContext) -> Plan:
        disk, enc = self.disk, self.disk.encryption
        key_ids = []
        if enc is not None:
            many = len(enc.secrets) > 1
            for i, ref in enumerate(enc.secrets):
                key_ids.append(self.secret("key", SecretBinding(ref), i if many else None))
        auth_ids: dict[Source, str] = {}
        for src in disk.sources():
            if src.auth is not None and src.auth.secret not in [b.ref for b in self._bindings()]:
                # a Ceph key is held as base64 text and QEMU needs the key bytes; an iSCSI
                # CHAP password is used as is (libvirt stores both decoded)
                encoding: Literal["raw", "base64"] = "base64" if src.auth.secret.kind == "ceph" else "raw"
                auth_ids[src] = self.secret("auth", SecretBinding(src.auth.secret, encoding))
            elif src.auth is not None:
                auth_ids[src] = next(s.name for s in self.steps if s.secret and s.secret.ref == src.auth.secret)
        if any(src.tls for src in disk.sources()):  # one client credentials object, before any nbd node
            self.tls_id = self.names.name("tls")
            args = {"qom-type": "tls-creds-x509", "id": self.tls_id, "dir": self.nbd_tls_dir,
                    "endpoint": "client", "verify-peer": True}
            self.steps.append(Step("secret", "tls", "object-add", args, "object-del", {"id": self.tls_id}))

        if enc is not None and enc.header is not None:
            hsrc = enc.header.source
            hproto = self.node("header-protocol", self.protocol_args(hsrc, auth_ids.get(hsrc)))
            header_raw: dict[str, Any] = {"driver": "raw", "file": hproto, **self.common()}
            if hsrc.slice is not None:
                header_raw.update({"offset": hsrc.slice[0], "size": hsrc.slice[1]})
            header = self.node("header-format", header_raw)
        else:
            header = None

        protocol_args = self.protocol_args(disk.source, auth_ids.get(disk.source))
        if enc is not None and enc.engine is Engine.LIBRBD:
            protocol_args["encrypt"] = self.rbd_encrypt(enc.format, key_ids)
        proto = self.node("payload-protocol", protocol_args)
        if disk.source.slice is not None:  # as libvirt: a raw node with offset/size over the storage
            offset, size = disk.source.slice
            proto = self.node("payload-slice", {"driver": "raw", "file": proto, "offset": offset, "size": size,
                                                **self.common()})

        if enc is None or enc.engine is Engine.LIBRBD:
            top = self.node("payload-format", {"driver": disk.format, "file": proto, **self.common()})
        elif header is not None:
            payload = self.node("payload-format", {"driver": disk.format, "file": proto, **self.common()})
            top = self.node("luks", {"driver": "luks", "file": payload, "header": header,
                                     "key-secret": key_ids[0], **self.common()})
        elif disk.format == "qcow2":
            top = self.node("payload-format", {"driver": "qcow2", "file": proto,
                                               "encrypt": {"format": "luks", "key-secret": key_ids[0]},
                                               **self.common()})
        else:
            top = self.node("luks", {"driver": "luks", "file": proto, "key-secret": key_ids[0], **self.common()})

        if disk.driver.copy_on_read:
            top = self.node("copy-on-read", {"driver": "copy-on-read", "file": top, **self.common()})
        if disk.iotune:
            group = self.names.name("throttle-group")
            limits = {key: value for key, value in disk.iotune}
            # kind 'secret' is the runner's kind for any QOM object (object-add / object-del)
            self.steps.append(Step("secret", "throttle-group", "object-add",
                                   {"qom-type": "throttle-group", "id": group, "limits": limits},
                                   "object-del", {"id": group}))
            top = self.node("throttle", {"driver": "throttle", "throttle-group": group, "file": top,
                                         **self.common()})
        device = self.device_args(top, ctx)
        self.steps.append(Step("device", "device", "device_add", device, "device_del", {"id": device["id"]}))
        return Plan(disk=disk, steps=tuple(self.steps))

    def _bindings(self) -> Iterable[SecretBinding]:
        return (s.secret for s in self.steps if s.secret is not None)

    def rbd_encrypt(self, fmt: LuksFormat, key_ids: list[str]) -> dict[str, Any]:
        """``encrypt`` for librbd: first secret is the image itself, each next one its parent."""
        nested: dict[str, Any] | None = None
        for key_id in reversed(key_ids):
            layer: dict[str, Any] = {"format": fmt.value, "key-secret": key_id}
            if nested is not None:
                layer["parent"] = nested
            nested = layer
        assert nested is not None
        return nested

    def common(self) -> dict[str, Any]:
        """Options libvirt puts on every node of the disk."""
        out: dict[str, Any] = {}
        drv = self.disk.driver
        if drv.cache is not None:
            direct, no_flush, _ = CACHE_MODES[drv.cache]
            out["cache"] = {"direct": direct, "no-flush": no_flush}
        if self.disk.readonly:
            out["read-only"] = True
        if drv.discard is not None:
            out["discard"] = drv.discard
        if drv.detect_zeroes is not None:
            # as libvirt: 'unmap' without discard='unmap' means 'on' (QEMU refuses the combination)
            unmap_ok = drv.detect_zeroes != "unmap" or drv.discard == "unmap"
            out["detect-zeroes"] = drv.detect_zeroes if unmap_ok else "on"
        return out

    def protocol_args(self, src: Source, auth_id: str | None) -> dict[str, Any]:
        args: dict[str, Any] = {"driver": _protocol_driver(src)}
        if src.kind in ("file", "block"):
            args["filename"] = src.path
            if self.disk.driver.io is not None:
                args["aio"] = self.disk.driver.io
        elif src.kind == "nvme":
            args.update({"device": src.nvme_device, "namespace": src.nvme_namespace})
        elif src.protocol == "rbd":
            pool, namespace, image = src.rbd_location()
            args["pool"] = pool
            if namespace:
                args["namespace"] = namespace
            args["image"] = image
            if src.rbd_snapshot is not None:
                args["snapshot"] = src.rbd_snapshot
            if src.config_file:
                args["conf"] = src.config_file
            if src.hosts:
                args["server"] = [{"host": h.name, "port": str(h.port or 6789)} for h in src.hosts]
            if src.auth is not None:
                args["user"] = src.auth.username
                args["auth-client-required"] = ["cephx", "none"]
                args["key-secret"] = auth_id
        elif src.protocol == "nbd":
            host = src.hosts[0]
            if host.socket is not None:
                args["server"] = {"type": "unix", "path": host.socket}
            else:
                args["server"] = {"type": "inet", "host": host.name, "port": str(host.port or 10809)}
            if src.name:
                args["export"] = src.name
            if src.tls:
                args["tls-creds"] = self.tls_id
                if src.tls_hostname:
                    args["tls-hostname"] = src.tls_hostname
        elif src.protocol in CURL_PROTOCOLS:
            host = src.hosts[0]
            port = f":{host.port}" if host.port else ""
            query = f"?{src.query}" if src.query else ""
            args["url"] = f"{src.protocol}://{host.name}{port}/{str(src.name).lstrip('/')}{query}"
            if src.ssl_verify is not None:
                args["sslverify"] = src.ssl_verify
            if src.auth is not None:
                args["username"] = src.auth.username
                args["password-secret"] = auth_id
        else:  # iscsi
            host = src.hosts[0]
            iqn, lun = str(src.name).rsplit("/", 1)
            args.update({"transport": "tcp", "portal": f"{host.name}:{host.port or 3260}",
                         "target": iqn, "lun": int(lun)})
            if src.auth is not None:
                args["user"] = src.auth.username
                args["password-secret"] = auth_id
        args.update(self.common())
        return args

    def device_args(self, top: str, ctx: PlanContext) -> dict[str, Any]:
        disk = self.disk
        dev: dict[str, Any] = {"driver": DEVICE_DRIVERS[disk.bus], "id": self.names.device_id, "drive": top}
        addr = disk.address
        if isinstance(addr, PCIAddress):
            dev["bus"] = ctx.pci_root_bus if addr.bus == 0 else f"pci.{addr.bus}"
            dev["addr"] = _hex(addr.slot) if addr.function == 0 else f"{_hex(addr.slot)}.{_hex(addr.function)}"
            if addr.multifunction:
                dev["multifunction"] = True
        elif isinstance(addr, DriveAddress):
            dev.update({"bus": f"scsi{addr.controller}.0", "channel": addr.bus, "scsi-id": addr.target,
                        "lun": addr.unit})
        elif isinstance(addr, USBAddress):
            if addr.port:
                dev["port"] = addr.port
        elif disk.bus == "virtio" and ctx.pci_bus:
            dev["bus"] = ctx.pci_bus
            if ctx.pci_slot is not None:
                dev["addr"] = _hex(ctx.pci_slot)
        elif disk.bus == "scsi" and ctx.scsi_bus:
            dev["bus"] = ctx.scsi_bus
        if disk.bus in ("usb", "scsi") and disk.removable:
            dev["removable"] = True
        if disk.serial:
            dev["serial"] = disk.serial
        if disk.shareable:
            dev["share-rw"] = True
        drv = disk.driver
        if drv.cache is not None:
            dev["write-cache"] = "on" if CACHE_MODES[drv.cache][2] else "off"
        if drv.error_policy is not None:
            dev["werror"] = ERROR_ACTIONS[drv.error_policy]
        if drv.rerror_policy is not None:
            dev["rerror"] = ERROR_ACTIONS[drv.rerror_policy]
        if drv.iothread is not None:
            dev["iothread"] = f"iothread{drv.iothread}"  # libvirt's IOThread object ids
        for prop, value in (("num-queues", drv.queues), ("queue-size", drv.queue_size),
                            ("ioeventfd", drv.ioeventfd), ("event_idx", drv.event_idx)):
            if value is not None:
                dev[prop] = value
        dev.update(dict(disk.blockio))
        dev.update(dict(disk.scsi_properties))
        if disk.boot_order is not None:
            dev["bootindex"] = disk.boot_order
        return dev
