"""What is in a live VM: capabilities, block nodes/objects/devices, free hot-plug slots."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.backends.replies import expect
from hotluks.errors import HotluksError, MalformedReply, RefusedError
from hotluks.lifecycle.pci import pci_reservations
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.plan.placement import Reservations, choose_root_slot, ports_by_preference, root_slots_in_use
from hotluks.plan.planner import PlanContext
from hotluks.runner.statedir import ensure_trusted_dir, read_regular, untrusted_reason, write_new

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
    #: fdset id → the opaque strings of its descriptors (queried only for backends that pass fds)
    fdsets: Mapping[int, frozenset[str]] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def names(self) -> frozenset[str]:
        return self.nodes | self.objects | self.devices

    def difference(self, before: VMSnapshot, *, extra_among: AbstractSet[str] | None = None) -> str:
        """Human summary of what changed since ``before`` ('' when identical).

        With ``extra_among``, only those new names count (e.g. the ones a plan creates:
        what another client added meanwhile is not ours to judge); missing names always do.
        """
        parts = []
        for label, now, then in (("nodes", self.nodes, before.nodes), ("objects", self.objects, before.objects),
                                 ("devices", self.devices, before.devices)):
            extra = now - then if extra_among is None else (now - then) & extra_among
            if extra:
                parts.append(f"extra {label}: {', '.join(sorted(extra))}")
            if then - now:
                parts.append(f"missing {label}: {', '.join(sorted(then - now))}")
        return "; ".join(parts)


def _children(listing: list[dict[str, Any]]) -> dict[str, str]:
    """``qom-list`` entries that are children: name → type."""
    return {str(e["name"]): str(e["type"])[6:-1] for e in listing if str(e.get("type", "")).startswith("child<")}


def _snapshot_queries(backend: MonitorBackend) -> list[Awaitable[Any]]:
    queries: list[Awaitable[Any]] = [
        backend.execute("query-named-block-nodes", {"flat": True}),
        backend.execute("qom-list", {"path": "/objects"}),
        backend.execute("qom-list", {"path": "/machine/peripheral"}),
    ]
    if backend.passes_fds:
        queries.append(backend.execute("query-fdsets"))
    return queries


def _snapshot_from(replies: Sequence[Any]) -> VMSnapshot:
    nodes, objects, devices, *fdsets = replies
    types = _children(devices)
    return VMSnapshot(
        nodes=frozenset(str(n["node-name"]) for n in nodes),
        objects=frozenset(_children(objects)),
        devices=frozenset(types),
        device_types=types,
        fdsets={int(s["fdset-id"]): frozenset(str(f.get("opaque", "")) for f in s.get("fds", []))
                for s in (fdsets[0] if fdsets else [])},
    )


async def snapshot(backend: MonitorBackend) -> VMSnapshot:
    """Block nodes, secret/other objects, peripheral devices and (when the backend passes
    descriptors) fdsets: three or four queries, pipelined."""
    return _snapshot_from(await asyncio.gather(*_snapshot_queries(backend)))


_CAPABILITIES: dict[str, Capabilities] = {}


async def probe_capabilities(backend: MonitorBackend, cache_dir: Path | None = None) -> Capabilities:
    """What the VM's QEMU supports, from ``query-version`` and ``query-qmp-schema``.

    The schema is fixed per QEMU build, and producing it costs QEMU ~30 ms of CPU
    (~100 ms through libvirt) plus ~10 ms here to parse. So results are shared by
    exact version and distribution package string: within the process, and across
    processes in ``cache_dir`` (small JSON files, nothing secret). Builds without a
    package string (self-compiled, whose configure options may differ) are always probed.
    """
    version = await backend.execute("query-version")
    package = str(version.get("package", "")).strip()
    key = hashlib.sha256(json.dumps(version, sort_keys=True).encode()).hexdigest()[:24]
    if package and key in _CAPABILITIES:
        return _CAPABILITIES[key]
    path = cache_dir / f"qemu-{key}.json" if cache_dir is not None and package else None
    if path is not None:
        cached = _load_capabilities(path)
        if cached is not None:
            _CAPABILITIES[key] = cached
            return cached
    schema = await backend.execute("query-qmp-schema")
    try:
        caps = Capabilities.from_qmp(schema, version)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # entries checked, their insides not
        raise MalformedReply(f"query-qmp-schema: malformed reply from the monitor ({type(exc).__name__}: "
                             f"{str(exc)[:80]})") from None
    if package:
        _CAPABILITIES[key] = caps
        if path is not None:
            _store_capabilities(path, caps)
    return caps


def _load_capabilities(path: Path) -> Capabilities | None:
    try:
        if untrusted_reason(path.parent) is not None:
            return None  # a cache others could write is not read
        data = read_regular(path, 1 << 16)
        if data is None:
            return None
        doc = json.loads(data)
        version = doc["qemu_version"]
        drivers = doc["block_drivers"]
        return Capabilities(
            qemu_version=(int(version[0]), int(version[1]), int(version[2])) if version else None,
            luks_detached_header=bool(doc["luks_detached_header"]),
            block_drivers=frozenset(map(str, drivers)) if drivers is not None else None,
            rbd_encrypt_formats=frozenset(map(str, doc["rbd_encrypt_formats"])),
            rbd_encrypt_parent=bool(doc["rbd_encrypt_parent"]),
        )
    except (OSError, ValueError, TypeError, KeyError, IndexError):
        return None  # absent, unreadable or not ours: probe again


def _store_capabilities(path: Path, caps: Capabilities) -> None:
    doc = {"qemu_version": caps.qemu_version, "luks_detached_header": caps.luks_detached_header,
           "block_drivers": sorted(caps.block_drivers) if caps.block_drivers is not None else None,
           "rbd_encrypt_formats": sorted(caps.rbd_encrypt_formats), "rbd_encrypt_parent": caps.rbd_encrypt_parent}
    try:
        ensure_trusted_dir(path.parent)
        write_new(path.parent, path, json.dumps(doc).encode())
    except (OSError, HotluksError):
        pass  # a cache only


async def machine_type(backend: MonitorBackend) -> str:
    """The QOM type of the machine (``pc-q35-10.0-machine``, ``pc-i440fx-…``)."""
    return str(expect("qom-get", await backend.execute("qom-get", {"path": "/machine", "property": "type"}), str,
                      "the machine type"))


def _places_on_pci(disk: Disk) -> bool:
    return disk.address is None and disk.bus == "virtio"


async def plan_context(backend: MonitorBackend, disk: Disk, snap: VMSnapshot, *,
                       machine: str | None = None) -> PlanContext:
    """Conflict names plus where to plug ``disk`` when its XML has no ``<address>``.

    PCI disks go to the top of the free range (see :mod:`hotluks.plan.placement`).
    ``machine`` (from :func:`machine_type`, constant for a VM's life) saves a query.
    :func:`survey` gets the same answer with the snapshot in one pipelined round.
    """
    machine = machine if machine is not None else await machine_type(backend)
    peripherals = dict(snap.device_types)
    if disk.address is None and not peripherals and (disk.bus == "scsi" or (disk.bus == "virtio" and "q35" in machine)):
        peripherals = _children(await backend.execute("qom-list", {"path": "/machine/peripheral"}))
    pci = (await pci_reservations(backend), await backend.execute("query-pci")) if _places_on_pci(disk) else None
    context, _ = await _context(backend, disk, snap, peripherals, machine, pci, {})
    return context


@dataclass(frozen=True)
class Survey:
    """What an attach needs to know of the VM before its first step, from one moment."""

    before: VMSnapshot
    context: PlanContext


@dataclass
class PortMemory:
    """What one connection's surveys learnt of a q35 VM's root ports: guesses that save round
    trips, never facts an attach relies on (each survey confirms, in QOM, the port it takes)."""

    #: root ports whose buses the next survey lists ahead (the likely next port first)
    hint: tuple[str, ...] = ()
    #: the hot-pluggable bridges ``query-pci`` showed, in bus order (empty or not), last time ...
    topology: tuple[str, ...] | None = None
    #: ... when the VM had these bridges: reused while it has exactly these (root ports cannot come
    #: or go on pcie.0 while QEMU runs)
    bridges: frozenset[str] = frozenset()

    def freed(self, bus: object) -> None:
        """A detach unplugged a device from ``bus``: the likely port of the next attach."""
        self.hint = (bus,) if isinstance(bus, str) else ()


class _AskQueryPci(Exception):
    """The remembered topology does not fit (bridges changed, a bus under another name)."""


async def survey(backend: MonitorBackend, disk: Disk, *, machine: str, memory: PortMemory | None = None) -> Survey:
    """:func:`snapshot` and :func:`plan_context` in one pipelined round, usually.

    The snapshot's queries, the domain's reserved addresses and, for a PCI disk without an
    ``<address>``, ``query-pci`` go out together; on q35 with ``memory``, so does the QOM bus
    listing of the port it expects, and ``query-pci`` is replaced by the remembered order of the
    bridges as long as the fresh snapshot shows the same ones. Every candidate port is still
    confirmed empty by its QOM bus listing, the last free one taken, exactly as :func:`plan_context`
    does; where the memory does not fit, the survey asks ``query-pci`` after all. ``memory`` is
    updated: the port taken is presumed busy from now on (the attach goes on), the next is expected.
    """
    memory = memory if memory is not None else PortMemory()
    q35 = "q35" in machine
    pci = _places_on_pci(disk)
    queries = _snapshot_queries(backend)
    count = len(queries)
    hint = [port for port in memory.hint[:2] if not memory.bridges or port in memory.bridges] if pci and q35 else []
    known = memory.topology if pci and q35 else None
    if pci:
        queries.append(pci_reservations(backend))
        if known is None:
            queries.append(backend.execute("query-pci"))
        queries += [_bus_listing(backend, port) for port in hint]
    replies = await asyncio.gather(*queries)
    before = _snapshot_from(replies[:count])
    peripherals = dict(before.device_types)
    facts: tuple[Reservations, list[dict[str, Any]]] | None = None
    listed: dict[str, list[dict[str, Any]] | None] = {}
    if pci:
        reserved, *rest = replies[count:]
        listed = dict(zip(hint, rest[len(rest) - len(hint):]))
        if known is not None:
            try:
                if _bridges(peripherals) != memory.bridges:
                    raise _AskQueryPci()
                return _remember(memory, before, await _context(backend, disk, before, peripherals, machine,
                                                                None, listed, known=(reserved, known)))
            except _AskQueryPci:
                listed = {port: got for port, got in listed.items() if got is not None}
                facts = (reserved, await backend.execute("query-pci"))
        else:
            facts = (reserved, rest[0])
        if q35:
            memory.topology, memory.bridges = tuple(_bridges_in_order(peripherals, facts[1])), _bridges(peripherals)
    return _remember(memory, before, await _context(backend, disk, before, peripherals, machine, facts, listed))


def _remember(memory: PortMemory, before: VMSnapshot, found: tuple[PlanContext, list[str]]) -> Survey:
    context, order = found
    taken = order[order.index(context.pci_bus):] if context.pci_bus in order else []
    memory.hint = tuple(taken[1:2])
    return Survey(before, context)


async def _context(backend: MonitorBackend, disk: Disk, snap: VMSnapshot, peripherals: Mapping[str, str],
                   machine: str, pci: tuple[Reservations, list[dict[str, Any]]] | None,
                   listed: Mapping[str, list[dict[str, Any]] | None], *,
                   known: tuple[Reservations, tuple[str, ...]] | None = None) -> tuple[PlanContext, list[str]]:
    """The plan context from the facts gathered; also the root ports in order of preference.

    ``known``: the reservations and the remembered bridge order, instead of ``query-pci`` (q35 only;
    :class:`_AskQueryPci` when a port's bus cannot be found in QOM).
    """
    q35 = "q35" in machine
    root = "pcie.0" if q35 else "pci.0"
    pci_bus = scsi_bus = None
    pci_slot: int | None = None
    order: list[str] = []
    if known is not None:
        reserved, topology = known
        order = ports_by_preference(topology, reserved.port_ids)
        pci_bus = await _free_pcie_port(backend, order, listed, strict=True)
    elif pci is not None:
        reserved, pci_devices = pci
        if q35:
            order = _port_candidates(peripherals, pci_devices, reserved)
            pci_bus = await _free_pcie_port(backend, order, listed)
        else:
            pci_bus, pci_slot = root, choose_root_slot(root_slots_in_use(pci_devices), reserved.root_slots)
    if disk.address is None and disk.bus == "scsi":
        controllers = sorted(n for n, t in peripherals.items() if t in SCSI_CONTROLLERS)
        if not controllers:
            raise RefusedError(f"target {disk.target_dev} is on the scsi bus but the VM has no SCSI controller "
                               "(add e.g. <controller type='scsi' model='virtio-scsi'/> or "
                               "-device virtio-scsi-pci,id=scsi0)")
        scsi_bus = f"{controllers[0]}.0"
    from hotluks.headers.tls import nbd_tls_dir

    return PlanContext(existing_names=snap.names, pci_bus=pci_bus, pci_slot=pci_slot, pci_root_bus=root,
                       scsi_bus=scsi_bus, nbd_tls_dir=nbd_tls_dir()), order


def _bridges(peripherals: Mapping[str, str]) -> frozenset[str]:
    return frozenset(name for name, typ in peripherals.items() if typ in HOTPLUG_BRIDGES)


def _bridges_in_order(peripherals: Mapping[str, str], pci_devices: list[dict[str, Any]]) -> list[str]:
    """Every hot-pluggable bridge with an id, in ``query-pci`` (bus) order, empty or not."""
    ports = _bridges(peripherals)
    return [str(dev["qdev_id"]) for bus in pci_devices for dev in _walk_pci(bus.get("devices", []))
            if dev.get("pci_bridge") and dev.get("qdev_id") in ports]


def _port_candidates(peripherals: Mapping[str, str], pci_devices: list[dict[str, Any]],
                     reserved: Reservations) -> list[str]:
    """Hot-pluggable root ports that ``query-pci`` shows empty, in order of preference."""
    ports = _bridges(peripherals)
    candidates: list[str] = []
    for bus in pci_devices:
        for dev in _walk_pci(bus.get("devices", [])):
            bridge = dev.get("pci_bridge")
            qdev_id = str(dev.get("qdev_id") or "")
            if bridge and qdev_id in ports and not bridge.get("devices"):
                candidates.append(qdev_id)
    return ports_by_preference(candidates, reserved.port_ids)


async def _free_pcie_port(backend: MonitorBackend, order: list[str],
                          listed: Mapping[str, list[dict[str, Any]] | None], *, strict: bool = False) -> str:
    """The id of the last empty hot-pluggable PCIe root port (q35 cannot hot-plug on pcie.0).

    ``query-pci`` lists the devices behind a bridge only once firmware has numbered
    its secondary bus; a paused or still-booting VM shows every bridge empty. So
    ports that ``query-pci`` shows empty (``order``) are confirmed, last first and one at a
    time until the first empty one, by their QOM bus (``/machine/peripheral/ID/ID``)
    having no ``child[N]`` device links (``listed``: listings already fetched with the
    ``query-pci`` they go with). Typically: one more query, or none. ``strict``: the order
    is remembered, not fresh, so a bus QOM cannot find is not judged by ``query-pci``.
    """
    for port in order:
        listing = listed[port] if port in listed else await _bus_listing(backend, port)
        if listing is None and strict:  # no bus of that name, and no fresh query-pci to trust
            raise _AskQueryPci()
        if _bus_empty(listing):
            return port
    raise RefusedError("no free hot-pluggable PCIe root port in this q35 VM: add spare ports "
                       "(libvirt: <controller type='pci' model='pcie-root-port'/>; QEMU: "
                       "-device pcie-root-port,id=rpN,chassis=N) or give the disk an <address>")


async def _bus_listing(backend: MonitorBackend, bridge: str) -> list[dict[str, Any]] | None:
    """The QOM listing of the secondary bus of ``bridge``; ``None`` when it has no bus of that name."""
    try:
        listing: list[dict[str, Any]] = await backend.execute("qom-list", {"path": f"/machine/peripheral/{bridge}/{bridge}"})
    except QMPCommandError:
        return None
    return listing


def _bus_empty(listing: list[dict[str, Any]] | None) -> bool:
    """True when a bus listing shows no device plugged (a bus not found under its usual name: trust query-pci)."""
    return listing is None or not any(str(e.get("name", "")).startswith("child[") for e in listing)


def _walk_pci(devices: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for dev in devices:
        out.append(dev)
        bridge = dev.get("pci_bridge")
        if bridge:
            out += _walk_pci(bridge.get("devices", []))
    return out
