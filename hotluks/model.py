"""The typed model of one libvirt-style ``<disk>``: what flows through parse → plan → run.

Everything here is immutable data with no I/O. ``Disk.from_xml`` is the front door
(it delegates to :mod:`hotluks.xmlparse`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path, PurePath
from typing import Literal

from hotluks.secrets import SecretRef as SecretRef  # re-exported: the disk model names its secrets

SourceKind = Literal["file", "block", "network"]
Protocol = Literal["rbd", "nbd", "iscsi"]
Bus = Literal["virtio", "scsi", "usb"]
ImageFormat = Literal["raw", "qcow2"]


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


@dataclass(frozen=True)
class Disk:
    """One encrypted (or plain) disk to attach, as parsed from ``<disk>``."""

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

    @classmethod
    def from_xml(cls, text_or_path: str | bytes | Path) -> Disk:
        """Parse and validate a ``<disk>`` given as XML text/bytes or a file path.

        Raises only :class:`hotluks.errors.InvalidDisk` (``XMLError`` for the XML itself).
        """
        from hotluks.xmlparse import parse_disk, read_disk_file

        if isinstance(text_or_path, bytearray | memoryview):
            text_or_path = bytes(text_or_path)
        if isinstance(text_or_path, PurePath):
            return read_disk_file(Path(text_or_path))
        if isinstance(text_or_path, str) and text_or_path.strip() and not text_or_path.lstrip().startswith("<"):
            return read_disk_file(Path(text_or_path))
        return parse_disk(text_or_path)

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
