"""Capabilities from a (small, fake) QMP schema; placement on a free PCIe root port from recorded
``query-pci`` / ``qom-list`` replies of QEMU 10.0.2; snapshots and their differences."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotluks.errors import RefusedError
from hotluks.model import Disk
from hotluks.plan.capabilities import Capabilities
from hotluks.runner.vmstate import PortMemory, VMSnapshot, plan_context, probe_capabilities, survey

ReplayFactory = Callable[[str], Any]


def _schema(luks_members: list[str], rbd: bool = True, parent: bool = True) -> list[dict[str, Any]]:
    """A tiny query-qmp-schema: blockdev-add → BlockdevOptions with luks/rbd/file variants."""
    schema: list[dict[str, Any]] = [
        {"name": "blockdev-add", "meta-type": "command", "arg-type": "0", "ret-type": "1"},
        {"name": "0", "meta-type": "object", "members": [{"name": "driver", "type": "2"}],
         "tag": "driver", "variants": [{"case": "file", "type": "10"}, {"case": "luks", "type": "11"}]
         + ([{"case": "rbd", "type": "12"}] if rbd else [])},
        {"name": "10", "meta-type": "object", "members": [{"name": "filename", "type": "str"}]},
        {"name": "11", "meta-type": "object", "members": [{"name": m, "type": "str"} for m in luks_members]},
        {"name": "12", "meta-type": "object", "members": [{"name": "encrypt", "type": "13"}]},
        {"name": "13", "meta-type": "object",
         "members": [{"name": "format", "type": "14"}] + ([{"name": "parent", "type": "13"}] if parent else [])},
        {"name": "14", "meta-type": "enum", "values": ["luks", "luks2"]},
    ]
    return schema


class _Schema:
    def __init__(self, schema: list[dict[str, Any]], major: int, package: str = ""):
        self.replies = {"query-qmp-schema": schema,
                        "query-version": {"qemu": {"major": major, "minor": 2, "micro": 1}, "package": package}}
        self.sent: list[str] = []

    async def execute(self, command: str, arguments: Any = None) -> Any:
        self.sent.append(command)
        return self.replies[command]


def test_capabilities_are_shared_per_exact_qemu_build() -> None:
    """A distribution build (version + package) is probed once per process; self-built ones always."""
    schema = _schema(["key-secret", "file", "header"])
    first = _Schema(schema, 77, "Debian 1:77.2.1+ds-1")
    second = _Schema(_schema(["key-secret", "file"]), 77, "Debian 1:77.2.1+ds-1")
    other = _Schema(_schema(["key-secret", "file"]), 77, "Debian 1:77.2.1+ds-2")
    caps = [asyncio.run(probe_capabilities(b)) for b in (first, second, other)]  # type: ignore[arg-type]
    assert first.sent == ["query-version", "query-qmp-schema"] and second.sent == ["query-version"]
    assert caps[1] is caps[0] and caps[0].luks_detached_header
    assert other.sent[-1] == "query-qmp-schema" and not caps[2].luks_detached_header
    unpackaged = [_Schema(schema, 78) for _ in range(2)]
    for backend in unpackaged:
        asyncio.run(probe_capabilities(backend))  # type: ignore[arg-type]
        assert backend.sent == ["query-version", "query-qmp-schema"]


def test_capabilities_are_cached_on_disk_per_exact_build(tmp_path: Path) -> None:
    """A new process (empty memory cache) reuses the probe of another; a damaged file is re-probed."""
    from hotluks.runner import vmstate

    cache = tmp_path / "capabilities"
    build = "Debian 1:79.0.0+ds-1"
    asyncio.run(probe_capabilities(_Schema(_schema(["key-secret", "file", "header"]), 79, build), cache))  # type: ignore[arg-type]
    (stored,) = cache.glob("qemu-*.json")
    vmstate._CAPABILITIES.clear()  # as in a fresh process
    later = _Schema(_schema(["key-secret", "file"]), 79, build)
    caps = asyncio.run(probe_capabilities(later, cache))  # type: ignore[arg-type]
    assert later.sent == ["query-version"] and caps.luks_detached_header and caps.qemu_version == (79, 2, 1)
    assert caps.rbd_encrypt_formats == {"luks", "luks2"} and caps.has_driver("rbd")
    vmstate._CAPABILITIES.clear()
    stored.write_text("{not json")
    again = _Schema(_schema(["key-secret", "file"]), 79, build)
    assert not asyncio.run(probe_capabilities(again, cache)).luks_detached_header  # type: ignore[arg-type]
    assert again.sent == ["query-version", "query-qmp-schema"]


def test_capabilities_from_a_small_schema() -> None:
    caps = asyncio.run(probe_capabilities(_Schema(_schema(["key-secret", "file", "header"]), 10)))  # type: ignore[arg-type]
    assert caps.qemu_version == (10, 2, 1) and caps.version_text == "10.2.1"
    assert caps.luks_detached_header and caps.has_driver("rbd") and not caps.has_driver("nbd")
    assert caps.rbd_encrypt_formats == {"luks", "luks2"} and caps.rbd_encrypt_parent
    old = Capabilities.from_qmp(_schema(["key-secret", "file"], rbd=False), {"qemu": {"major": 8, "minor": 0}})
    assert not old.luks_detached_header and not old.has_driver("rbd")
    assert old.rbd_encrypt_formats == frozenset() and not old.rbd_encrypt_parent
    no_parent = Capabilities.from_qmp(_schema(["key-secret", "file", "header"], parent=False))
    assert not no_parent.rbd_encrypt_parent and no_parent.qemu_version is None
    bare = Capabilities.from_qmp([{"name": "query-version", "meta-type": "command"}])
    assert not bare.luks_detached_header and bare.block_drivers == frozenset()


def _virtio(dev: str = "vdc") -> Disk:
    return Disk.from_xml(f"<disk type='file'><driver name='qemu' type='raw'/><source file='/x.img'/>"
                         f"<target dev='{dev}' bus='virtio'/></disk>")


def _scsi() -> Disk:
    return Disk.from_xml("<disk type='file'><driver name='qemu' type='raw'/><source file='/x.img'/>"
                         "<target dev='sdc' bus='scsi'/></disk>")


@pytest.mark.parametrize("recording", ["q35-paused-rp1-used", "q35-booted-rp1-used"])
def test_placement_skips_the_occupied_port(recorded: ReplayFactory, recording: str) -> None:
    """rp1 holds hl-vdb: a paused VM's query-pci does not show it (bridges unnumbered), a booted one does;
    either way the disk goes to the last free port, rp3 (libvirt hands out the first free one)."""
    backend = recorded(recording)
    ctx = asyncio.run(plan_context(backend, _virtio(), VMSnapshot(frozenset(), frozenset(), frozenset())))
    assert ctx.pci_bus == "rp3" and ctx.pci_root_bus == "pcie.0"
    assert ctx.scsi_bus is None


def test_placement_paused_vm_relies_on_qom(recorded: ReplayFactory) -> None:
    """Without the QOM bus check, the paused recording would wrongly offer an occupied port."""
    backend = recorded("q35-paused-rp1-used")
    rp1 = next(d for d in backend.replies["query-pci"][0]["devices"] if d.get("qdev_id") == "rp1")
    assert not rp1["pci_bridge"].get("devices")  # what query-pci says on a paused VM
    for port in ("rp2", "rp3"):  # occupied too, as only QOM shows
        backend.replies[f"qom-list /machine/peripheral/{port}/{port}"].append(
            {"name": "child[0]", "type": "link<virtio-blk-pci>"})
    with pytest.raises(RefusedError, match="no free hot-pluggable PCIe root port"):
        asyncio.run(plan_context(backend, _virtio(), VMSnapshot(frozenset(), frozenset(), frozenset())))
    assert "qom-list /machine/peripheral/rp1/rp1" in backend.sent


def test_placement_trusts_query_pci_when_the_bus_has_another_name(recorded: ReplayFactory) -> None:
    backend = recorded("q35-booted-rp1-used")
    for port in ("rp1", "rp2", "rp3"):  # QOM lookups fail: query-pci decides
        del backend.replies[f"qom-list /machine/peripheral/{port}/{port}"]
    ctx = asyncio.run(plan_context(backend, _virtio(), VMSnapshot(frozenset(), frozenset(), frozenset())))
    assert ctx.pci_bus == "rp3"


def test_no_free_port_is_refused(recorded: ReplayFactory) -> None:
    backend = recorded("q35-booted-rp1-used")
    for port in ("rp2", "rp3"):
        backend.replies[f"qom-list /machine/peripheral/{port}/{port}"].append(
            {"name": "child[0]", "type": "link<virtio-blk-pci>"})
    with pytest.raises(RefusedError, match="no free hot-pluggable PCIe root port"):
        asyncio.run(plan_context(backend, _virtio(), VMSnapshot(frozenset(), frozenset(), frozenset())))


def test_scsi_placement_and_missing_controller(recorded: ReplayFactory) -> None:
    backend = recorded("q35-booted-rp1-used")
    ctx = asyncio.run(plan_context(backend, _scsi(), VMSnapshot(frozenset(), frozenset(), frozenset())))
    assert ctx.scsi_bus == "scsi0.0" and ctx.pci_bus is None
    backend.replies["qom-list /machine/peripheral"] = [
        e for e in backend.replies["qom-list /machine/peripheral"] if e["name"] != "scsi0"]
    with pytest.raises(RefusedError, match="no SCSI controller"):
        asyncio.run(plan_context(backend, _scsi(), VMSnapshot(frozenset(), frozenset(), frozenset())))


def _surveyable(backend: Any) -> Any:
    backend.replies.update({"query-named-block-nodes": [{"node-name": "hl-vdb-luks"}], "qom-list /objects": []})
    return backend


Q35 = "pc-q35-10.0-machine"


def _listings(backend: Any) -> list[str]:
    return [k for k in backend.sent if k.startswith("qom-list /machine/peripheral/")]


@pytest.mark.parametrize("recording", ["q35-paused-rp1-used", "q35-booted-rp1-used"])
@pytest.mark.parametrize("hint", [(), ("rp3",), ("rp2",), ("rp1",), ("rp9",), ("rp3", "rp2")])
@pytest.mark.parametrize("remembered", [False, True])
def test_survey_places_as_plan_context_whatever_it_remembers(recorded: ReplayFactory, recording: str,
                                                              hint: tuple[str, ...], remembered: bool) -> None:
    """The pipelined survey (snapshot + placement) decides exactly what snapshot + plan_context would;
    a port hint only lists buses ahead, a remembered bridge order only replaces query-pci: a wrong or
    occupied guess costs a query, never the answer."""
    backend = _surveyable(recorded(recording))
    memory = PortMemory()
    if remembered:  # a first survey on this connection learns the bridge order
        asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory))
        assert memory.topology == ("rp1", "rp2", "rp3") and memory.hint == ("rp2",)
        backend.sent.clear()
    memory.hint = hint
    seen = asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory))
    assert seen.context.pci_bus == "rp3" and memory.hint == ("rp2",)
    assert seen.before.nodes == {"hl-vdb-luks"} and "rp1" in seen.before.devices
    assert "hl-vdb-luks" in seen.context.existing_names
    assert backend.sent.count("query-pci") == (0 if remembered else 1)
    listed = _listings(backend)
    assert "qom-list /machine/peripheral/rp3/rp3" in listed and len(listed) == len(set(listed))
    if hint[:1] == ("rp3",):  # the right guess: one pipelined round, nothing after it
        assert listed == [f"qom-list /machine/peripheral/{port}/{port}" for port in hint] == backend.sent[-len(hint):]


def test_survey_does_not_trust_an_occupied_guess(recorded: ReplayFactory) -> None:
    backend = _surveyable(recorded("q35-paused-rp1-used"))
    backend.replies["qom-list /machine/peripheral/rp3/rp3"].append({"name": "child[0]", "type": "link<virtio-blk-pci>"})
    seen = asyncio.run(survey(backend, _virtio(), machine=Q35, memory=PortMemory(hint=("rp3",))))
    assert seen.context.pci_bus == "rp2" and backend.sent[-1] == "qom-list /machine/peripheral/rp2/rp2"


def test_survey_asks_query_pci_when_the_memory_does_not_fit(recorded: ReplayFactory) -> None:
    """Other bridges than remembered, or a bus QOM cannot find: query-pci again (and trust it, as before)."""
    backend = _surveyable(recorded("q35-booted-rp1-used"))
    memory = PortMemory()
    asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory))
    memory.bridges = frozenset({"rp1", "rp2"})  # as if rp3 had come since
    backend.sent.clear()
    assert asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory)).context.pci_bus == "rp3"
    assert backend.sent.count("query-pci") == 1 and memory.bridges == {"rp1", "rp2", "rp3"}
    for port in ("rp1", "rp2", "rp3"):  # QOM lookups fail: only a fresh query-pci may decide
        del backend.replies[f"qom-list /machine/peripheral/{port}/{port}"]
    backend.sent.clear()
    memory.hint = ("rp3",)
    assert asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory)).context.pci_bus == "rp3"
    assert backend.sent.count("query-pci") == 1


def test_survey_of_a_scsi_disk_sends_no_pci_queries(recorded: ReplayFactory) -> None:
    backend = _surveyable(recorded("q35-booted-rp1-used"))
    memory = PortMemory(hint=("rp3",), topology=("rp1", "rp2", "rp3"), bridges=frozenset({"rp1", "rp2", "rp3"}))
    seen = asyncio.run(survey(backend, _scsi(), machine=Q35, memory=memory))
    assert seen.context.scsi_bus == "scsi0.0" and seen.context.pci_bus is None and memory.hint == ()
    assert backend.sent == ["query-named-block-nodes", "qom-list /objects", "qom-list /machine/peripheral"]


def test_a_detach_points_the_next_survey_at_the_freed_port(recorded: ReplayFactory) -> None:
    memory = PortMemory(hint=("rp2",))
    memory.freed("rp4")
    assert memory.hint == ("rp4",)
    memory.freed(None)
    assert memory.hint == ()
    backend = _surveyable(recorded("q35-paused-rp1-used"))
    asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory))
    memory.freed("pcie.0")  # a disk with an <address> on the root bus: no root port to list ahead
    backend.sent.clear()
    asyncio.run(survey(backend, _virtio(), machine=Q35, memory=memory))
    assert _listings(backend) == ["qom-list /machine/peripheral/rp3/rp3"]


def test_snapshot_difference() -> None:
    before = VMSnapshot(frozenset({"n1"}), frozenset({"pc.ram"}), frozenset({"rp1"}))
    after = VMSnapshot(frozenset({"n1", "hl-vdb-luks"}), frozenset(), frozenset({"rp1"}))
    assert before.difference(before) == ""
    assert after.difference(before) == "extra nodes: hl-vdb-luks; missing objects: pc.ram"
    assert after.names == {"n1", "hl-vdb-luks", "rp1"}


def test_snapshot_difference_limited_to_our_names() -> None:
    before = VMSnapshot(frozenset({"n1"}), frozenset(), frozenset())
    after = VMSnapshot(frozenset({"hl-vdb-fmt", "libvirt-3-format"}), frozenset(), frozenset())
    assert after.difference(before, extra_among={"hl-vdb-fmt", "hl-vdb-key"}) == (
        "extra nodes: hl-vdb-fmt; missing nodes: n1")
    assert after.difference(before, extra_among=set()) == "missing nodes: n1"  # missing always counts
