"""PCI placement from the top of the free range, and the persistent definition's reservations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hotluks.backends.base import MonitorBackend, QMPArgs
from hotluks.errors import RefusedError
from hotluks.model import Disk
from hotluks.plan.placement import (
    Reservations,
    choose_root_slot,
    ports_by_preference,
    reservations_from_domain_xml,
    root_slots_in_use,
)
from hotluks.plan.planner import build_plan
from hotluks.runner.vmstate import VMSnapshot, plan_context

DOMAIN_XML = """<domain type='qemu'><name>d</name><devices>
  <controller type='pci' index='0' model='pcie-root'/>
  <controller type='pci' index='1' model='pcie-root-port'>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x0' multifunction='on'/></controller>
  <controller type='pci' index='2' model='pcie-root-port'>
    <address type='pci' domain='0x0000' bus='0x00' slot='0x02' function='0x1'/></controller>
  <disk type='file' device='disk'><target dev='vda' bus='virtio'/>
    <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/></disk>
  <interface type='user'><address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x0'/></interface>
  <controller type='usb' index='0'><address type='usb' bus='0' port='1'/></controller>
</devices></domain>"""


def pc_query_pci(*slots: int) -> list[dict[str, Any]]:
    return [{"bus": 0, "devices": [{"bus": 0, "slot": s, "function": 0, "qdev_id": f"d{s}"} for s in slots]}]


def test_highest_free_root_slot_is_taken() -> None:
    assert choose_root_slot(frozenset({0, 1, 2, 5})) == 0x1F
    assert choose_root_slot(frozenset({0, 1, 0x1F}), reserved=frozenset({0x1E})) == 0x1D


def test_full_root_bus_is_refused() -> None:
    with pytest.raises(RefusedError, match="no free PCI slot"):
        choose_root_slot(frozenset(range(0, 32)))


def test_last_empty_port_first_and_reserved_ports_skipped() -> None:
    assert ports_by_preference(["pci.2", "pci.3", "pci.4"]) == ["pci.4", "pci.3", "pci.2"]
    assert ports_by_preference(["pci.2", "pci.3", "pci.4"], frozenset({"pci.4"})) == ["pci.3", "pci.2"]


def test_reservations_from_a_libvirt_definition() -> None:
    res = reservations_from_domain_xml(DOMAIN_XML)
    assert res.root_slots == {0x02, 0x1F}
    assert res.buses == {2} and res.port_ids == {"pci.2"}
    assert (res | Reservations(frozenset({3}))).root_slots == {2, 3, 0x1F}


def test_slots_in_use_count_every_function_of_bus_0_only() -> None:
    reply = pc_query_pci(0, 1, 3)
    reply[0]["devices"].append({"bus": 0, "slot": 1, "function": 1})
    reply.append({"bus": 1, "devices": [{"bus": 1, "slot": 7, "function": 0}]})
    assert root_slots_in_use(reply) == {0, 1, 3}


class PcBackend(MonitorBackend):
    """A pc VM's read-only replies, and optionally a libvirt persistent definition."""

    name = "libvirt"
    vm = "pc-vm"

    def __init__(self, slots: tuple[int, ...], definition: str | None = None):
        super().__init__()
        self.slots = slots
        self.definition = definition

    async def execute(self, command: str, arguments: QMPArgs | None = None) -> Any:
        if command == "query-pci":
            return pc_query_pci(*self.slots)
        if command == "qom-get":
            return "pc-i440fx-10.0-machine"
        raise AssertionError(f"unexpected {command}")

    async def persistent_xml(self) -> str | None:
        return self.definition


def virtio_disk(address: str = "") -> Disk:
    return Disk.from_xml("<disk type='file'><driver name='qemu' type='raw'/><source file='/x.img'/>"
                         f"<target dev='vdc' bus='virtio'/>{address}</disk>")


EMPTY = VMSnapshot(frozenset(), frozenset(), frozenset())


def test_pc_disk_goes_to_the_top_slot_and_off_the_persistent_ones() -> None:
    ctx = asyncio.run(plan_context(PcBackend((0, 1, 2)), virtio_disk(), EMPTY))
    device = build_plan(virtio_disk(), context=ctx).steps[-1].arguments
    assert (device["bus"], device["addr"]) == ("pci.0", "0x1f")
    ctx = asyncio.run(plan_context(PcBackend((0, 1, 2), DOMAIN_XML), virtio_disk(), EMPTY))
    assert (ctx.pci_bus, ctx.pci_slot) == ("pci.0", 0x1E)  # 0x1f is the definition's NIC


def test_explicit_address_is_honoured_without_probing() -> None:
    addr = "<address type='pci' domain='0' bus='0' slot='0x07' function='0'/>"
    ctx = asyncio.run(plan_context(PcBackend((0, 1, 2)), virtio_disk(addr), EMPTY, machine="pc"))
    assert ctx.pci_bus is None and ctx.pci_slot is None
    device = build_plan(virtio_disk(addr), context=ctx).steps[-1].arguments
    assert (device["bus"], device["addr"]) == ("pci.0", "0x7")


def test_placement_flags_from_qom() -> None:
    from hotluks.lifecycle.placement_probe import placement_from_qom

    assert placement_from_qom("/machine/peripheral/rp4/rp4", 0).cold_cmdline_flags() == ["--pci-bus", "rp4"]
    pc = placement_from_qom("/machine/i440fx/pci.0", 0x1F << 3)
    assert (pc.bus, pc.slot, pc.function) == ("pci.0", 0x1F, 0)
    assert pc.cold_cmdline_flags() == ["--pci-bus", "pci.0", "--pci-slot", "0x1f"]


def test_cold_cmdline_places_the_device_like_the_hot_plug(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from hotluks.cli.main import main

    xml = tmp_path / "d.xml"
    xml.write_text("<disk type='file'><driver name='qemu' type='raw'/><source file='/x.img'/>"
                   "<target dev='vdc' bus='virtio'/></disk>")
    assert main(["cold-cmdline", str(xml), "--format", "json", "--pci-bus", "pci.0", "--pci-slot", "0x1f"]) == 0
    device = json.loads(json.loads(capsys.readouterr().out)[-1])
    assert (device["id"], device["bus"], device["addr"]) == ("hl-vdc", "pci.0", "0x1f")
