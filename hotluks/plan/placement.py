"""Where a PCI disk without an ``<address>`` goes, so that libvirt's next allocation stays free.

libvirt does not see what hotluks plugs through the monitor: its own address set
still holds the slot (pc) or root port (q35) as free, and it hands out the lowest
free one first. hotluks therefore takes from the *top* of the free range: the
highest free slot on the pc root bus, the last empty root port on q35. It also
keeps off addresses the domain's persistent definition reserves (devices added
with ``--config`` that are not live yet). Pure: the facts come in as data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from hotluks.errors import RefusedError

#: hot-pluggable slots of a conventional PCI root bus (slot 0 is the host bridge)
ROOT_SLOTS = range(1, 32)


@dataclass(frozen=True)
class Reservations:
    """PCI addresses a libvirt domain definition holds.

    ``root_slots``: slots on bus 0; ``buses``: bus numbers devices sit on (on q35 a
    root port's index: libvirt names the port ``pci.N`` and puts its one device on bus N).
    """

    root_slots: frozenset[int] = frozenset()
    buses: frozenset[int] = frozenset()

    @property
    def port_ids(self) -> frozenset[str]:
        """QEMU ids (libvirt aliases) of the root ports/bridges that already have a device."""
        return frozenset(f"pci.{bus}" for bus in self.buses)

    def __or__(self, other: Reservations) -> Reservations:
        return Reservations(self.root_slots | other.root_slots, self.buses | other.buses)


def _number(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def reservations_from_domain_xml(xml: str | bytes) -> Reservations:
    """The PCI addresses of every device in a libvirt domain XML (``<address type='pci'>``)."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(xml.encode() if isinstance(xml, str) else xml, parser)
    slots: set[int] = set()
    buses: set[int] = set()
    for addr in root.iterfind(".//devices//address[@type='pci']"):
        bus, slot = _number(addr.get("bus")), _number(addr.get("slot"))
        if bus is None or slot is None or (_number(addr.get("domain")) or 0) != 0:
            continue
        if bus == 0:
            slots.add(slot)
        else:
            buses.add(bus)
    return Reservations(frozenset(slots), frozenset(buses))


def root_slots_in_use(query_pci: Iterable[dict[str, Any]]) -> frozenset[int]:
    """Slots of bus 0 that ``query-pci`` shows occupied (any function)."""
    used: set[int] = set()
    for bus in query_pci:
        if int(bus.get("bus", 0)) != 0:
            continue
        used.update(int(dev["slot"]) for dev in bus.get("devices", []) if int(dev.get("bus", 0)) == 0 and "slot" in dev)
    return frozenset(used)


def choose_root_slot(in_use: AbstractSet[int], reserved: AbstractSet[int] = frozenset()) -> int:
    """The highest slot of the root bus that is neither in use nor reserved."""
    for slot in reversed(ROOT_SLOTS):
        if slot not in in_use and slot not in reserved:
            return slot
    raise RefusedError("no free PCI slot on the root bus of this VM: give the disk an <address> "
                       "on a PCI bridge, or use bus='scsi'")


def ports_by_preference(empty_ports: Sequence[str], reserved: AbstractSet[str] = frozenset()) -> list[str]:
    """Empty root ports (in bus order) to try, last first, without those a definition reserves."""
    return [port for port in reversed(empty_ports) if port not in reserved]
