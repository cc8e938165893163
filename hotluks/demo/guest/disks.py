"""QMP arguments for plugging a plain disk into the guest's layout (pure).

Tests and the demo use these to hot-plug a node onto the right bus without
repeating the layout's bus/controller names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from hotluks.demo.guest.vm import VMLayout

Bus = Literal["virtio", "scsi"]


def raw_file_node(node_name: str, path: Path, *, read_only: bool = False) -> dict[str, Any]:
    """``blockdev-add`` arguments: a raw format node over a file."""
    return {"driver": "raw", "node-name": node_name, "read-only": read_only,
            "file": {"driver": "file", "filename": str(path), "read-only": read_only}}


def disk_device(layout: VMLayout, bus: Bus, device_id: str, node_name: str, *,
                serial: str | None = None, slot: int = 0) -> dict[str, Any]:
    """``device_add`` arguments for a virtio-blk (``pci_bus_for(slot)``) or scsi-hd (``scsi_bus``) disk.

    ``serial`` shows up in the guest's ``ls-block`` (virtio-blk serial, SCSI VPD page 0x80),
    which is how a test finds the disk it plugged.
    """
    args: dict[str, Any]
    if bus == "virtio":
        args = {"driver": "virtio-blk-pci", "id": device_id, "drive": node_name, "bus": layout.pci_bus_for(slot)}
    elif bus == "scsi":
        args = {"driver": "scsi-hd", "id": device_id, "drive": node_name, "bus": layout.scsi_bus}
    else:
        raise ValueError(f"unknown disk bus {bus!r}")
    if serial is not None:
        args["serial"] = serial
    return args
