"""``status --all``'s inventory: VMs found by their records, a gone QEMU told from /proc alone."""

from __future__ import annotations

import os
from pathlib import Path

from hotluks.backends.identity import process_instance
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from hotluks.runner.inventory import instance_gone, known_vms, offline_entries, vm_gone_for_good
from hotluks.runner.journal import Journal, Record, vm_dirname


def _save(state: Path, key: str, vm: str, target: str, example_xml: Path, instance: str) -> None:
    plan = build_plan(Disk.from_xml(example_xml.read_text().replace("dev='vdb'", f"dev='{target}'")))
    record = Record.for_plan(vm, plan, vm_key=key, instance=instance)
    record.status = "attached"
    Journal(state, key).save(record)


def test_known_vms_and_lost_from_proc(example_xml: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    alive = process_instance(os.getpid())
    assert alive is not None and not instance_gone(alive)
    _save(state, "0b3c1c44-5d1f-4e0c-9d43-52bd3b0a6e11", "dom1", "vdb", example_xml, alive)
    _save(state, "0b3c1c44-5d1f-4e0c-9d43-52bd3b0a6e11", "dom1", "vdc", example_xml, alive)
    _save(state, "qemu-pid999999999-1", "unix:/run/gone.qmp", "vdb", example_xml, "999999999-1")
    (state / "pins").mkdir(mode=0o700)  # not a VM
    stray = state / vm_dirname("some-other-key")  # a record filed under the wrong VM's directory is not listed
    stray.mkdir(mode=0o700)
    (stray / "vdb.json").write_bytes((state / vm_dirname("qemu-pid999999999-1") / "vdb.json").read_bytes())
    vms = {v.vm: v for v in known_vms(state)}
    assert set(vms) == {"dom1", "unix:/run/gone.qmp"}
    assert [t for t, _ in vms["dom1"].entries] == ["vdb", "vdc"] and vms["dom1"].instances == {alive}
    gone = vms["unix:/run/gone.qmp"]
    assert all(instance_gone(i) for i in gone.instances)
    assert not instance_gone("domid5")  # only libvirt can tell
    assert vm_gone_for_good(gone) and not vm_gone_for_good(vms["dom1"])  # a domain (UUID) may run again
    (entry,) = offline_entries(gone, "lost", "the QEMU process is gone")
    assert (entry.target, entry.status, entry.consistent, entry.error) == ("vdb", "lost", False,
                                                                          "the QEMU process is gone")
    assert entry.components and not any(i.present for i in entry.components)
    assert known_vms(tmp_path / "missing") == []
