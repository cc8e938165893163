"""What is in a live VM: capabilities, block nodes/objects/devices, free hot-plug slots."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.errors import RefusedError
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.planner import PlanContext

HOTPLUG_BRIDGES = ("pcie-root-port", "pci-bridge", "pcie-pci-bridge", "ioh3420", "xio3130-downstream")
SCSI_CONTROLLERS = ("virtio-scsi-pci", "virtio-scsi-pci-non-transitional", "virtio-scsi-pci-transitional",
                    "lsi53c895a", "megasas", "megasas-gen2", "mptsas1068", "pvscsi", "am53c974", "dc390")


@dataclass(frozen=True)
class VMSnapshot:
    """Names of everything block-related in a VM at one moment.

    ``device_types`` (id → QOM type of each peripheral) rides along for placement;
    it does not take part in comparisons.
    """

    nodes: frozenset[str]
    objects: frozenset[str]
    devices: frozenset[str]
    device_types: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def names(self) -> frozenset[str]:
        return self.nodes | self.objects | self.devices

    def difference(self, before: VMSnapshot) -> str:
        """Human summary of what changed since ``before`` ('' when identical)."""
        parts = []
        for label, now, then in (("nodes", self.nodes, before.nodes), ("objects", self.objects, before.objects),
                                 ("devices", self.devices, before.devices)):
            if now - then:
                parts.append(f"extra {label}: {', '.join(sorted(now - then))}")
            if then - now:
                parts.append(f"missing {label}: {', '.join(sorted(then - now))}")
        return "; ".join(parts)


def _children(listing: list[dict[str, Any]]) -> dict[str, str]:
    """``qom-list`` entries that are children: name → type."""
    return {str(e["name"]): str(e["type"])[6:-1] for e in listing if str(e.get("type", "")).startswith("child<")}


async def snapshot(backend: MonitorBackend) -> VMSnapshot:
    """Block nodes, secret/other objects and peripheral devices (three queries, pipelined)."""
    nodes, objects, devices = await asyncio.gather(
        backend.execute("query-named-block-nodes", {"flat": True}),
        backend.execute("qom-list", {"path": "/objects"}),
        backend.execute("qom-list", {"path": "/machine/peripheral"}),
    )
    types = _children(devices)
    return VMSnapshot(
        nodes=frozenset(str(n["node-name"]) for n in nodes),
        objects=frozenset(_children(objects)),
        devices=frozenset(types),
        device_types=types,
    )


_CAPABILITIES: dict[tuple[int, int, int, str], Capabilities] = {}


async def probe_capabilities(backend: MonitorBackend) -> Capabilities:
    """What the VM's QEMU supports, from ``query-version`` and ``query-qmp-schema``.

    The schema is fixed per QEMU build, and producing it costs QEMU ~30 ms of CPU
    (plus ~10 ms here to parse): results are shared within the process by exact
    version and distribution package string. Builds without a package string (self-
    compiled, whose configure options may differ) are always probed.
    """
    version = await backend.execute("query-version")
    q = version.get("qemu", {})
    package = str(version.get("package", "")).strip()
    key = (int(q.get("major", 0)), int(q.get("minor", 0)), int(q.get("micro", 0)), package)
    if package and key in _CAPABILITIES:
        return _CAPABILITIES[key]
    caps = Capabilities.from_qmp(await backend.execute("query-qmp-schema"), version)
    if package:
        _CAPABILITIES[key] = caps
    return caps


async def machine_type(backend: MonitorBackend) -> str:
    """The QOM type of the machine (``pc-q35-10.0-machine``, ``pc-i440fx-…``)."""
    return str(await backend.execute("qom-get", {"path": "/machine", "property": "type"}))


async def plan_context(backend: MonitorBackend, disk: Disk, snap: VMSnapshot, *,
                       machine: str | None = None) -> PlanContext:
    """Conflict names plus where to plug ``disk`` when its XML has no ``<address>``.

    ``machine`` (from :func:`machine_type`, constant for a VM's life) saves a query.
    """
    machine = machine if machine is not None else await machine_type(backend)
    q35 = "q35" in machine
    root = "pcie.0" if q35 else "pci.0"
    pci_bus = scsi_bus = None
    peripherals = dict(snap.device_types)
    if disk.address is None and not peripherals and (disk.bus == "scsi" or (disk.bus == "virtio" and q35)):
        peripherals = _children(await backend.execute("qom-list", {"path": "/machine/peripheral"}))
    if disk.address is None and disk.bus == "virtio" and q35:
        pci_bus = await _free_pcie_port(backend, peripherals)
    if disk.address is None and disk.bus == "scsi":
        controllers = sorted(n for n, t in peripherals.items() if t in SCSI_CONTROLLERS)
        if not controllers:
            raise RefusedError(f"target {disk.target_dev} is on the scsi bus but the VM has no SCSI controller "
                               "(add e.g. <controller type='scsi' model='virtio-scsi'/> or "
                               "-device virtio-scsi-pci,id=scsi0)")
        scsi_bus = f"{controllers[0]}.0"
    return PlanContext(existing_names=snap.names, pci_bus=pci_bus, pci_root_bus=root, scsi_bus=scsi_bus)


async def _free_pcie_port(backend: MonitorBackend, peripherals: Mapping[str, str]) -> str:
    """The id of an empty hot-pluggable PCIe root port (q35 cannot hot-plug on pcie.0).

    ``query-pci`` lists the devices behind a bridge only once firmware has numbered
    its secondary bus; a paused or still-booting VM shows every bridge empty. So
    ports that ``query-pci`` shows empty are confirmed, in bus order and one at a
    time until the first empty one, by their QOM bus (``/machine/peripheral/ID/ID``)
    having no ``child[N]`` device links. Typically: two queries.
    """
    ports = {name for name, typ in peripherals.items() if typ in HOTPLUG_BRIDGES}
    candidates: list[str] = []
    for bus in await backend.execute("query-pci"):
        for dev in _walk_pci(bus.get("devices", [])):
            bridge = dev.get("pci_bridge")
            qdev_id = str(dev.get("qdev_id") or "")
            if bridge and qdev_id in ports and not bridge.get("devices"):
                candidates.append(qdev_id)
    for port in candidates:
        if await _bus_is_empty(backend, port):
            return port
    raise RefusedError("no free hot-pluggable PCIe root port in this q35 VM: add spare ports "
                       "(libvirt: <controller type='pci' model='pcie-root-port'/>; QEMU: "
                       "-device pcie-root-port,id=rpN,chassis=N) or give the disk an <address>")


async def _bus_is_empty(backend: MonitorBackend, bridge: str) -> bool:
    """True when the secondary bus of ``bridge`` has no devices plugged (per QOM)."""
    try:
        listing = await backend.execute("qom-list", {"path": f"/machine/peripheral/{bridge}/{bridge}"})
    except QMPCommandError:
        return True  # bus not found under its usual name: trust query-pci
    return not any(str(e.get("name", "")).startswith("child[") for e in listing)


def _walk_pci(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for dev in devices:
        out.append(dev)
        bridge = dev.get("pci_bridge")
        if bridge:
            out += _walk_pci(bridge.get("devices", []))
    return out
