"""Where a plugged device sits (bus and slot), read from QEMU, as `cold-cmdline` placement flags."""

from __future__ import annotations

from dataclasses import dataclass

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.backends.replies import expect
from hotluks.errors import InputError


@dataclass(frozen=True)
class DevicePlacement:
    """A PCI device's parent bus (QEMU id: ``pci.0``, ``pcie.0``, a root port) and slot/function."""

    bus: str
    slot: int
    function: int

    def cold_cmdline_flags(self) -> list[str]:
        """`hotluks cold-cmdline` options that put the device exactly here (disks use function 0)."""
        flags = ["--pci-bus", self.bus]
        if self.slot:
            flags += ["--pci-slot", f"{self.slot:#x}"]
        return flags


def placement_from_qom(parent_bus: str, devfn: int) -> DevicePlacement:
    """From ``qom-get parent_bus`` (``/machine/peripheral/rp3/rp3``) and ``addr`` (slot << 3 | function). Pure."""
    return DevicePlacement(parent_bus.rstrip("/").rsplit("/", 1)[-1], devfn >> 3, devfn & 7)


async def device_placement(backend: MonitorBackend, device: str) -> DevicePlacement:
    """The placement of peripheral ``device`` in the running VM."""
    path = f"/machine/peripheral/{device}"
    try:
        parent = await backend.execute("qom-get", {"path": path, "property": "parent_bus"})
        devfn = await backend.execute("qom-get", {"path": path, "property": "addr"})
    except QMPCommandError as exc:
        raise InputError(f"the VM has no PCI device {device!r} ({exc.desc})") from None
    return placement_from_qom(expect("qom-get", parent, str, "parent_bus"), expect("qom-get", devfn, int, "addr"))
