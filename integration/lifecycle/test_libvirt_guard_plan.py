"""The migration guard is part of the plan on a real libvirt domain: shown, journaled, rolled back, checked.

A guest-less q35 domain on the real libvirtd. `attach --dry-run` lists the guard's `add-fd`
and `hlg-vdb` node first (exactly what a real run sends); an attach that fails in QEMU (a wrong
passphrase with `--no-preflight`) rolls the guard back with everything else; a successful
attach journals the guard like every step, `status` checks it (removed by hand: exit 3), and
`detach` lifts it after the device is gone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.runner.journal import vm_dirname
from testsupport.libvirtd import domain_xml, give_to_qemu, qemu_accessible_dir
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


@pytest.fixture
def domain(libvirt_uri: str) -> Iterator[tuple[str, str]]:
    """(name, uuid) of a transient, paused q35 domain."""
    import libvirt

    conn = libvirt.open(libvirt_uri)
    name = f"hotluks-gp-{uuid.uuid4().hex[:8]}"
    dom = conn.createXML(domain_xml(name, machine="q35", root_ports=4, scsi=False), libvirt.VIR_DOMAIN_START_PAUSED)
    try:
        yield name, dom.UUIDString()
    finally:
        if dom.isActive():
            dom.destroy()
        conn.close()


def _ours(virsh: Any, name: str) -> tuple[set[str], set[str]]:
    """hotluks' node names, and the opaque tags of its fdsets, in the running QEMU."""
    nodes = {n["node-name"] for n in virsh.monitor(name, "query-named-block-nodes", flat=True)}
    tags = {f.get("opaque", "") for s in virsh.monitor(name, "query-fdsets") for f in s.get("fds", [])}
    return {n for n in nodes if n.startswith(("hl-", "hlg-"))}, {t for t in tags if t.startswith("hotluks")}


def test_guard_is_planned_journaled_rolled_back_and_checked(libvirt_uri: str, domain: tuple[str, str],
                                                            virsh: Any, tmp_path: Path) -> None:
    name, dom_uuid = domain
    state = tmp_path / "state"
    common = ["--connect", libvirt_uri, "--state-dir", str(state)]
    with qemu_accessible_dir() as work:
        disk = make_disk(work / "d", "detached-header-raw", "vdb", "virtio")
        for path in [work / "d", *disk.files]:
            give_to_qemu(path)

        dry = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common, "--path", "qmp", "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        commands = json.loads(dry.stdout)["commands"]
        assert [c["execute"] for c in commands[:2]] == ["add-fd", "blockdev-add"]
        assert commands[0]["arguments"]["opaque"] == "hotluks:hlg-vdb"
        assert commands[1]["arguments"]["node-name"] == "hlg-vdb" and commands[1]["arguments"]["driver"] == "vdi"
        assert _ours(virsh, name) == (set(), set())  # a dry run sends nothing

        wrong = work / "wrong"
        wrong.write_bytes(b"not-the-passphrase")
        failed = run_cli("attach", name, disk.xml_path, f"--secret={disk.secret_key}={wrong}", "--path", "qmp", "--no-preflight",
                         *common)
        assert failed.returncode == 1, failed.stderr  # rolled back, guard included
        assert "blockdev-del hlg-vdb" in failed.stderr, failed.stderr
        assert _ours(virsh, name) == (set(), set())
        assert virsh.monitor(name, "query-migrate").get("blocked-reasons", []) == []

        attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common, "--path", "qmp", "--json")
        assert attached.returncode == 0, attached.stderr
        steps = [s["name"] for s in json.loads(attached.stdout)["steps"]]
        assert steps[1] == "hlg-vdb" and steps[0].startswith("fdset-")
        record = (state / vm_dirname(dom_uuid.lower()) / "vdb.json").read_text()
        assert '"hlg-vdb"' in record and "hotluks:hlg-vdb" in record
        assert any("hlg-vdb" in r for r in virsh.monitor(name, "query-migrate").get("blocked-reasons", []))
        status = run_cli("status", name, *common, "--json")
        assert status.returncode == 0, status.stderr
        (entry,) = json.loads(status.stdout)["disks"]
        assert {"kind": "node", "name": "hlg-vdb", "present": True} in entry["items"]

        virsh.monitor(name, "blockdev-del", **{"node-name": "hlg-vdb"})  # someone lifts the guard by hand
        broken = run_cli("status", name, *common)
        assert broken.returncode == 3 and "hlg-vdb" in broken.stdout, broken.stdout

        detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "20", "--json")
        assert detached.returncode == 0, detached.stderr
        removed = json.loads(detached.stdout)["removed"]
        assert removed[0] == "device_del hl-vdb" and not any("hlg-vdb" in r for r in removed)  # already gone
        assert _ours(virsh, name) == (set(), set())
    assert not leaks(PASSPHRASE, [dry.stdout, failed.stderr, attached.stdout, status.stdout, record])
