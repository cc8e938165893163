"""QMP through the libvirt and virsh backends against a real libvirtd and QEMU."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from hotluks.backends.base import MonitorBackend, QMPCommandError
from hotluks.backends.select import open_backend
from hotluks.errors import DomainNotFound, InputError, NotRunning
from testsupport.libvirtd import TransientDomain, give_to_qemu, qemu_accessible_dir

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]


async def _open(domain: TransientDomain, backend_name: str) -> MonitorBackend:
    return await open_backend(domain.name, uri=domain.uri, backend=backend_name)


def test_query_version_and_block_nodes(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    async def main() -> tuple[Any, Any, str]:
        async with await _open(domain, backend_name) as backend:
            return (await backend.execute("query-version"),
                    await backend.execute("query-named-block-nodes", {"flat": True}), backend.name)

    version, nodes, name = arun(main())
    assert name == backend_name
    assert version["qemu"]["major"] >= 9
    assert isinstance(nodes, list)


def test_error_reply_is_qmp_command_error(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    async def main() -> QMPCommandError:
        async with await _open(domain, backend_name) as backend:
            with pytest.raises(QMPCommandError) as info:
                await backend.execute("blockdev-del", {"node-name": "hl-no-such-node"})
            return info.value

    err = arun(main())
    assert err.command == "blockdev-del"
    assert err.error_class == "GenericError"
    assert "hl-no-such-node" in err.desc and "Failed to find node" in err.desc


def test_unknown_command_is_command_not_found(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    async def main() -> QMPCommandError:
        async with await _open(domain, backend_name) as backend:
            with pytest.raises(QMPCommandError) as info:
                await backend.execute("hotluks-no-such-command")
            return info.value

    assert arun(main()).error_class == "CommandNotFound"


def test_unknown_domain_is_domain_not_found(libvirt_uri: str, backend_name: str, arun: Run) -> None:
    with pytest.raises(DomainNotFound) as info:
        arun(open_backend("hotluks-no-such-domain", uri=libvirt_uri, backend=backend_name))
    assert "hotluks-no-such-domain" in str(info.value) and libvirt_uri in str(info.value)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_hotplug_and_unplug_with_device_deleted_event(domain: TransientDomain, backend_name: str, bus: str,
                                                      arun: Run) -> None:
    with qemu_accessible_dir() as workdir:
        image = workdir / "plain.raw"
        image.write_bytes(b"\0" * (4 << 20))
        give_to_qemu(image)
        device = {"virtio": {"driver": "virtio-blk-pci", "bus": "pci.3"},
                  "scsi": {"driver": "scsi-hd", "bus": "scsi0.0"}}[bus]

        async def main() -> tuple[list[str], dict[str, Any], list[str]]:
            async with await _open(domain, backend_name) as backend:
                await backend.execute("blockdev-add", {"driver": "file", "filename": str(image),
                                                       "node-name": "hl-t-file"})
                await backend.execute("blockdev-add", {"driver": "raw", "file": "hl-t-file", "node-name": "hl-t-fmt"})
                await backend.execute("device_add", {**device, "drive": "hl-t-fmt", "id": "hl-t-dev"})
                nodes = [n["node-name"] for n in await backend.execute("query-named-block-nodes", {"flat": True})]
                with backend.events(["DEVICE_DELETED"]) as queue:
                    await backend.execute("device_del", {"id": "hl-t-dev"})
                    while True:
                        event = await queue.get(timeout=20)
                        if event["data"].get("device") == "hl-t-dev":
                            break
                await backend.execute("blockdev-del", {"node-name": "hl-t-fmt"})
                await backend.execute("blockdev-del", {"node-name": "hl-t-file"})
                after = [n["node-name"] for n in await backend.execute("query-named-block-nodes", {"flat": True})]
                return nodes, event, after

        nodes, event, after = arun(main())
    assert {"hl-t-file", "hl-t-fmt"} <= set(nodes)
    assert event["event"] == "DEVICE_DELETED"
    assert event["data"]["path"] == "/machine/peripheral/hl-t-dev"
    assert event["timestamp"]["seconds"] > 0
    assert not {"hl-t-file", "hl-t-fmt"} & set(after)


def test_events_filter_by_name(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    """A queue for one name never sees others; two blocks at once both get the event."""
    with qemu_accessible_dir() as workdir:
        image = workdir / "plain.raw"
        image.write_bytes(b"\0" * (1 << 20))
        give_to_qemu(image)

        async def main() -> tuple[dict[str, Any], dict[str, Any]]:
            async with await _open(domain, backend_name) as backend:
                await backend.execute("blockdev-add", {"driver": "file", "filename": str(image),
                                                       "node-name": "hl-e-file"})
                await backend.execute("device_add", {"driver": "scsi-hd", "bus": "scsi0.0", "drive": "hl-e-file",
                                                     "id": "hl-e-dev"})
                with backend.events(["RESUME"]) as other, backend.events(["DEVICE_DELETED"]) as wanted, \
                        backend.events() as everything:
                    await backend.execute("device_del", {"id": "hl-e-dev"})
                    got = await wanted.get(timeout=20)
                    seen = await everything.get(timeout=20)
                    with pytest.raises(TimeoutError):
                        await other.get(timeout=0.5)
                    with pytest.raises(TimeoutError):  # delivered once, though three blocks are open
                        await wanted.get(timeout=0.1)
                await backend.execute("blockdev-del", {"node-name": "hl-e-file"})
                return got, seen

        got, seen = arun(main())
    assert got["event"] == "DEVICE_DELETED" and seen["event"] == "DEVICE_DELETED"


def test_concurrent_backends_on_one_loop(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    async def main() -> list[Any]:
        backends = [await _open(domain, backend_name) for _ in range(4)]
        try:
            return list(await asyncio.gather(*(b.execute("query-status") for b in backends for _ in range(3))))
        finally:
            for b in backends:
                await b.close()

    statuses = arun(main())
    assert len(statuses) == 12 and all(s["running"] is False for s in statuses)


def test_defined_but_stopped_domain_is_not_running(libvirt_uri: str, backend_name: str, arun: Run) -> None:
    import libvirt

    from testsupport.libvirtd import domain_xml

    name = f"hotluks-stopped-{backend_name}"
    conn = libvirt.open(libvirt_uri)
    dom = conn.defineXML(domain_xml(name))
    try:
        with pytest.raises(NotRunning, match="not running") as info:
            arun(open_backend(name, uri=libvirt_uri, backend=backend_name))
        assert name in str(info.value) and isinstance(info.value, InputError) and info.value.exit_code == 2
    finally:
        dom.undefine()
        conn.close()


def test_monitor_commands_taint_the_domain(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    """As documented: libvirt records 'custom-monitor' in the domain log once we use the monitor."""
    from testsupport.libvirtd import QEMU_LOG_DIR

    log = QEMU_LOG_DIR / f"{domain.name}.log"
    assert "custom-monitor" not in log.read_text(errors="replace")

    async def main() -> None:
        async with await _open(domain, backend_name) as backend:
            await backend.execute("query-status")

    arun(main())
    assert "tainted: custom-monitor" in log.read_text(errors="replace")


def test_domain_by_uuid(domain: TransientDomain, backend_name: str, arun: Run) -> None:
    """A UUID works like the name, and both give the same lock/journal key (the UUID) on either backend."""
    async def main() -> tuple[Any, set[str]]:
        keys = set()
        for vm in (domain.uuid, domain.name):
            for kind in ("libvirt", "virsh"):
                async with await open_backend(vm, uri=domain.uri, backend=kind) as b:
                    keys.add(b.vm_key)
        async with await open_backend(domain.uuid, uri=domain.uri, backend=backend_name) as backend:
            return await backend.execute("query-status"), keys

    status, keys = arun(main())
    assert status["status"] == "prelaunch"
    assert keys == {domain.uuid}
