"""Truthful state after a restart: a hot-plugged disk of a domain whose QEMU restarted is ``lost``.

Two persistent guest-less q35 domains on the real libvirtd each get a disk from hotluks.
`virsh destroy` + `virsh start` of one gives it a new QEMU without the disk: `hotluks status`
says ``lost`` with exit 3 (not ``attached``), `status --all` lists both domains (one lost),
`repair` keeps the record and says how to plug it again, and `attach` of the same disk
plugs it again (with its migration guard). A domain that is shut off lists as lost too, and
`detach` of a lost disk forgets it once the domain runs again.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport.libvirtd import domain_xml, give_to_qemu, qemu_accessible_dir
from testsupport.schemas import validate
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


@pytest.fixture
def two_domains(libvirt_uri: str) -> Iterator[list[str]]:
    """Two defined, running (paused) q35 domains; destroyed and undefined afterwards."""
    import libvirt

    conn = libvirt.open(libvirt_uri)
    names = [f"hotluks-lost-{uuid.uuid4().hex[:8]}" for _ in range(2)]
    doms = []
    try:
        for name in names:
            dom = conn.defineXML(domain_xml(name, machine="q35", root_ports=4, scsi=False))
            doms.append(dom)
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        yield names
    finally:
        for dom in doms:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()


def _states(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(v["vm"], d["target"]): d["status"] for v in doc["vms"] for d in v["disks"]}


def test_restart_makes_the_disk_lost_and_attach_plugs_it_again(libvirt_uri: str, two_domains: list[str],
                                                               virsh: Any, tmp_path: Path) -> None:
    first, second = two_domains
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    outputs: list[str] = []
    with qemu_accessible_dir() as work:
        disks = {}
        for name, shape in ((first, "detached-header-raw"), (second, "attached-luks")):
            disk = make_disk(work / name, shape, "vdb", "virtio")
            for path in [work / name, *disk.files]:
                give_to_qemu(path)
            attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common, "--path", "qmp")
            assert attached.returncode == 0, attached.stderr
            disks[name] = disk

        listing = run_cli("status", "--all", *common, "--json")
        assert listing.returncode == 0, listing.stderr
        doc = json.loads(listing.stdout)
        validate("status", doc)
        assert _states(doc) == {(first, "vdb"): "attached", (second, "vdb"): "attached"}
        assert {v["backend"] for v in doc["vms"]} == {"libvirt"} and all(v["reached"] for v in doc["vms"])

        assert virsh("destroy", first).returncode == 0
        started = virsh("start", first, "--paused")
        assert started.returncode == 0, started.stderr

        status = run_cli("status", first, *common, "--json")
        assert status.returncode == 3, status.stderr  # not attached any more: never exit 0
        (entry,) = json.loads(status.stdout)["disks"]
        assert (entry["status"], entry["consistent"]) == ("lost", False)
        text = run_cli("status", first, *common)
        assert text.returncode == 3 and "lost" in text.stdout and "hotluks attach" in text.stderr
        everything = run_cli("status", "--all", *common, "--json")
        assert everything.returncode == 3
        validate("status", json.loads(everything.stdout))
        assert _states(json.loads(everything.stdout)) == {(first, "vdb"): "lost", (second, "vdb"): "attached"}

        repaired = run_cli("repair", first, *common, "--json")
        assert repaired.returncode == 0, repaired.stderr
        assert [(a["target"], a["action"]) for a in json.loads(repaired.stdout)["actions"]] == [("vdb", "lost")]

        again = run_cli("attach", first, disks[first].xml_path, *disks[first].cli_secret(), *common, "--path", "qmp",
                        "--json")
        assert again.returncode == 0, again.stderr
        assert not json.loads(again.stdout)["already_attached"]  # plugged again, not "already there"
        nodes = {n["node-name"] for n in virsh.monitor(first, "query-named-block-nodes", flat=True)}
        assert {"hl-vdb-luks", "hlg-vdb"} <= nodes, nodes
        healthy = run_cli("status", first, *common, "--json")
        assert healthy.returncode == 0, healthy.stderr
        assert [(d["status"], d["consistent"]) for d in json.loads(healthy.stdout)["disks"]] == [("attached", True)]

        assert virsh("destroy", second).returncode == 0  # shut off: its disk is lost too
        off = run_cli("status", "--all", *common, "--json")
        assert off.returncode == 3
        validate("status", json.loads(off.stdout))
        assert _states(json.loads(off.stdout)) == {(first, "vdb"): "attached", (second, "vdb"): "lost"}

        assert virsh("start", second, "--paused").returncode == 0
        forgotten = run_cli("detach", second, "--target", "vdb", *common, "--json")
        assert forgotten.returncode == 0, forgotten.stderr
        assert json.loads(forgotten.stdout)["already_absent"]
        assert run_cli("detach", first, "--target", "vdb", *common, "--timeout", "20").returncode == 0
        final = run_cli("status", "--all", *common, "--json")
        assert final.returncode == 0 and json.loads(final.stdout)["vms"] == []
        outputs += [listing.stdout, status.stdout, text.stdout, text.stderr, everything.stdout, again.stdout,
                    off.stdout]
    assert not leaks(PASSPHRASE, outputs)
