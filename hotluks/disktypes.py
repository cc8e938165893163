"""The typed parts of one libvirt-style ``<disk>``: what flows through parse → plan → run.

Everything here is immutable data with no I/O and no knowledge of XML. The parser
(:mod:`hotluks.xmlparse`) builds these; :class:`hotluks.model.Disk` (the public class,
with the ``from_xml`` front door) is :class:`DiskData` plus that one constructor, so the
model and the parser import each other in one direction only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

from hotluks.secrets import SecretRef as SecretRef  # re-exported: the disk model names its secrets

SourceKind = Literal["file", "block", "network", "volume", "nvme", "dir", "vhostuser", "vhostvdpa"]
Protocol = Literal["rbd", "nbd", "iscsi", "http", "https", "ftp", "ftps", "tftp", "gluster", "ssh", "vxhs", "nfs",
                   "sheepdog"]
Bus = Literal["virtio", "scsi", "usb"]
#: image formats libvirt names in ``<driver type=…>``; hotluks encrypts raw and qcow2 itself
ImageFormat = Literal["raw", "qcow2", "qed", "vmdk", "vdi", "vpc", "vhdx", "luks", "bochs", "cloop", "dmg",
                      "parallels"]
#: source kinds and network protocols the planner can attach
PLANNABLE_KINDS = ("file", "block", "network", "nvme")
PLANNABLE_PROTOCOLS = ("rbd", "nbd", "iscsi", "http", "https", "ftp", "ftps")
#: network protocols QEMU reads through libcurl (read-only)
CURL_PROTOCOLS = ("http", "https", "ftp", "ftps")


class Engine(str, Enum):
    """Who decrypts: QEMU's own LUKS driver, or librbd inside the rbd driver."""

    QEMU = "qemu"
    LIBRBD = "librbd"


class LuksFormat(str, Enum):
    """libvirt's ``<encryption format=…>`` values."""

    LUKS = "luks"
    LUKS2 = "luks2"
    LUKS_ANY = "luks-any"


@dataclass(frozen=True)
class Host:
    """A network endpoint: ``name``/``port`` over TCP or a UNIX ``socket``."""

    name: str | None = None
    port: int | None = None
    socket: str | None = None


@dataclass(frozen=True)
class Auth:
    """``<auth username=…><secret type='ceph|iscsi' …/></auth>``."""

    username: str
    secret: SecretRef


@dataclass(frozen=True)
class Source:
    """Where bytes live: a file, a block device, or a network (rbd/nbd/iscsi) volume."""

    kind: SourceKind
    path: str | None = None
    protocol: Protocol | None = None
    name: str | None = None
    hosts: tuple[Host, ...] = ()
    auth: Auth | None = None
    config_file: str | None = None
    line: int | None = None
    tls: bool = False  # nbd ``tls='yes'``: x509 client credentials from the TLS directory
    tls_hostname: str | None = None  # libvirt's ``tlsHostname``: the name to check in the server certificate
    #: ``type='nvme'``: the controller's PCI address (``0000:01:00.0``) and the namespace
    nvme_device: str | None = None
    nvme_namespace: int | None = None
    #: ``type='volume'``: ``(pool, volume)`` of a libvirt storage pool
    pool_volume: tuple[str, str] | None = None
    #: ``<slices><slice type='storage' offset= size=/>``: a byte range of the source
    slice: tuple[int, int] | None = None
    #: curl sources (http/https/ftp/ftps): ``?query`` of the URL, and ``<ssl verify=…>``
    query: str | None = None
    ssl_verify: bool | None = None
    #: parsed libvirt features the planner cannot apply to this source (with why)
    unsupported: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind in ("file", "block")

    @property
    def is_rbd(self) -> bool:
        return self.protocol == "rbd"

    def rbd_location(self) -> tuple[str, str | None, str]:
        """``(pool, namespace, image)`` from an rbd ``name='pool[/ns]/image[@snapshot]'``."""
        parts = (self.name or "").partition("@")[0].split("/")
        if len(parts) == 2:
            return parts[0], None, parts[1]
        return parts[0], parts[1], parts[2]

    @property
    def rbd_snapshot(self) -> str | None:
        """The snapshot of an rbd ``name='pool/image@snapshot'`` (as libvirt), else None."""
        if not self.is_rbd or "@" not in (self.name or ""):
            return None
        return (self.name or "").partition("@")[2]

    def describe(self) -> str:
        if self.path is not None:
            return f"{self.kind} {self.path}"
        if self.nvme_device is not None:
            return f"nvme {self.nvme_device} namespace {self.nvme_namespace}"
        if self.pool_volume is not None:
            return f"volume {self.pool_volume[0]}/{self.pool_volume[1]}"
        return f"{self.protocol} {self.name or ''}".strip()


@dataclass(frozen=True)
class DetachedHeader:
    """The detached LUKS header (hotluks' extension ``<header>``): a raw source of its own.

    ``fingerprint`` is the pinned header identity (lowercase sha256 hex,
    :mod:`hotluks.luks.fingerprint`), or None when the header is not pinned.
    """

    source: Source
    fingerprint: str | None = None


@dataclass(frozen=True)
class Encryption:
    """``<encryption>``: format, engine, secrets (librbd: one per clone layer) and header."""

    format: LuksFormat
    engine: Engine
    secrets: tuple[SecretRef, ...]
    header: DetachedHeader | None = None


@dataclass(frozen=True)
class PCIAddress:
    domain: int = 0
    bus: int = 0
    slot: int = 0
    function: int = 0
    multifunction: bool = False


@dataclass(frozen=True)
class DriveAddress:
    controller: int = 0
    bus: int = 0
    target: int = 0
    unit: int = 0


@dataclass(frozen=True)
class USBAddress:
    bus: int = 0
    port: str | None = None


Address = PCIAddress | DriveAddress | USBAddress


@dataclass(frozen=True)
class DriverOptions:
    """``<driver>`` tuning with a QEMU equivalent."""

    cache: str | None = None
    discard: str | None = None
    io: str | None = None
    detect_zeroes: str | None = None
    #: write/read error actions (QEMU ``werror``/``rerror``)
    error_policy: str | None = None
    rerror_policy: str | None = None
    copy_on_read: bool = False
    #: virtio-blk: IOThread number (libvirt's ``iothreadN`` object), queue count and size
    iothread: int | None = None
    queues: int | None = None
    queue_size: int | None = None
    ioeventfd: bool | None = None
    event_idx: bool | None = None
    discard_no_unref: bool | None = None


@dataclass(frozen=True)
class DiskData:
    """One encrypted (or plain) disk to attach: its fields and derived views.

    Use :class:`hotluks.model.Disk` (this plus ``from_xml``); the parser builds whichever
    subclass it is given.
    """

    source: Source
    target_dev: str
    bus: Bus
    format: ImageFormat = "raw"
    encryption: Encryption | None = None
    driver: DriverOptions = field(default_factory=DriverOptions)
    address: Address | None = None
    alias: str | None = None
    serial: str | None = None
    readonly: bool = False
    shareable: bool = False
    removable: bool = False
    #: ``<iotune>`` as QEMU ``ThrottleLimits`` members (``("bps-total", 1048576)``, …)
    iotune: tuple[tuple[str, int], ...] = ()
    #: ``<blockio>`` as device properties (``("logical_block_size", 4096)``, …)
    blockio: tuple[tuple[str, int], ...] = ()
    boot_order: int | None = None
    #: scsi-hd identity properties (``wwn``, ``vendor``, ``product``, ``rotation_rate``)
    scsi_properties: tuple[tuple[str, str | int], ...] = ()
    #: what the XML said that hotluks ignores (read-only state of ``virsh dumpxml``), one line each
    notes: tuple[str, ...] = ()

    @property
    def secrets(self) -> tuple[SecretRef, ...]:
        """Every secret the disk references (passphrases first, then auth secrets)."""
        refs: list[SecretRef] = list(self.encryption.secrets) if self.encryption else []
        for src in self.sources():
            if src.auth is not None and src.auth.secret not in refs:
                refs.append(src.auth.secret)
        return tuple(refs)

    def sources(self) -> tuple[Source, ...]:
        """The payload source, then the header source if any."""
        if self.encryption is not None and self.encryption.header is not None:
            return (self.source, self.encryption.header.source)
        return (self.source,)

    @property
    def shape(self) -> str:
        """A short name of the block-graph shape (used in listings and tests)."""
        enc = self.encryption
        if enc is None:
            return "plain"
        if enc.engine is Engine.LIBRBD:
            return "librbd-layered" if len(enc.secrets) > 1 else "librbd"
        if enc.header is not None:
            return f"detached-header-{self.format}"
        return "qcow2-native" if self.format == "qcow2" else "attached-luks"
