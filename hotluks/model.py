"""The typed model of one libvirt-style ``<disk>``: what flows through parse → plan → run.

Everything here is immutable data with no I/O (the parts live in :mod:`hotluks.disktypes`,
re-exported here). ``Disk.from_xml`` is the front door: it hands the XML to
:mod:`hotluks.xmlparse`, which builds a ``Disk`` from the parts and never imports this
module, so there is no import cycle.
"""

from __future__ import annotations

import os
from typing import Any

from hotluks.disktypes import CURL_PROTOCOLS as CURL_PROTOCOLS
from hotluks.disktypes import PLANNABLE_KINDS as PLANNABLE_KINDS
from hotluks.disktypes import PLANNABLE_PROTOCOLS as PLANNABLE_PROTOCOLS
from hotluks.disktypes import Address as Address
from hotluks.disktypes import Auth as Auth
from hotluks.disktypes import Bus as Bus
from hotluks.disktypes import DetachedHeader as DetachedHeader
from hotluks.disktypes import DiskData as DiskData
from hotluks.disktypes import DriveAddress as DriveAddress
from hotluks.disktypes import DriverOptions as DriverOptions
from hotluks.disktypes import Encryption as Encryption
from hotluks.disktypes import Engine as Engine
from hotluks.disktypes import Host as Host
from hotluks.disktypes import ImageFormat as ImageFormat
from hotluks.disktypes import LuksFormat as LuksFormat
from hotluks.disktypes import PCIAddress as PCIAddress
from hotluks.disktypes import Protocol as Protocol
from hotluks.disktypes import SecretRef as SecretRef
from hotluks.disktypes import Source as Source
from hotluks.disktypes import SourceKind as SourceKind
from hotluks.disktypes import USBAddress as USBAddress


class Disk(DiskData):
    """One encrypted (or plain) disk to attach, as parsed from ``<disk>``."""

    __slots__ = ()

    @classmethod
    def from_xml(cls, text_or_path: str | bytes | bytearray | memoryview | os.PathLike[str]) -> Disk:
        """Parse and validate a ``<disk>`` given as XML text/bytes or a file path.

        Raises only :class:`hotluks.errors.InvalidDisk` (``XMLError`` for the XML itself).
        """
        from hotluks.xmlparse import parse_disk, read_disk_file  # lazily: lxml and the schema cost start-up

        data: Any = bytes(text_or_path) if isinstance(text_or_path, bytearray | memoryview) else text_or_path
        if isinstance(data, os.PathLike):  # pathlib is not imported: CLI start-up
            return read_disk_file(data, cls)
        if isinstance(data, str) and data.strip() and not data.lstrip().startswith("<"):
            return read_disk_file(data, cls)
        return parse_disk(data, cls)
