"""libvirt's disk tuning applied by a real QEMU: <iotune> limits, error policies, blockio, boot order, COR.

The plan's steps go to QEMU as they are; QEMU reports back what it applied
(``query-block`` inserted.bps…, ``qom-get`` of the throttle group, device properties).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import start_qemu
from hotluks.model import Disk
from hotluks.plan.planner import build_plan
from testsupport.schemas import validate

pytestmark = [pytest.mark.qemu]

TUNED = """<disk type='file' device='disk'>
  <driver name='qemu' type='raw' cache='none' discard='unmap' detect_zeroes='unmap' error_policy='report'
          rerror_policy='stop' copy_on_read='on' queues='2' queue_size='256'{iothread}/>
  <source file='{path}' index='3'/>
  <backingStore/>
  <target dev='vdb' bus='virtio'/>
  <iotune>
    <read_bytes_sec>1048576</read_bytes_sec>
    <write_bytes_sec>2097152</write_bytes_sec>
    <total_iops_sec>500</total_iops_sec>
    <total_iops_sec_max>1000</total_iops_sec_max>
    <total_iops_sec_max_length>5</total_iops_sec_max_length>
  </iotune>
  <blockio logical_block_size='512' physical_block_size='4096'/>
  <boot order='3'/>
  <alias name='virtio-disk1'/>
  <serial>tuned</serial>
</disk>
"""


def test_tuned_disk_is_applied_by_qemu(images: Any, monitor_for: Any) -> None:
    vol = images.raw("tuned.raw", 8)
    disk = Disk.from_xml(TUNED.format(path=vol, iothread=" iothread='1'"))
    plan = build_plan(disk)
    assert [s.role for s in plan.steps] == ["payload-protocol", "payload-format", "copy-on-read",
                                            "throttle-group", "throttle", "device"]
    assert any("backingStore" in n for n in disk.notes) and any("virtio-disk1" in n for n in disk.notes)
    with start_qemu(["-object", "iothread,id=iothread1"], machine="pc") as proc:
        qmp = monitor_for(proc)
        for step in plan.steps:
            qmp(step.command, step.qmp()["arguments"])
        group = plan.steps[3].name
        limits = qmp("qom-get", {"path": f"/objects/{group}", "property": "limits"})
        assert (limits["bps-read"], limits["bps-write"], limits["iops-total"]) == (1048576, 2097152, 500)
        assert (limits["iops-total-max"], limits["iops-total-max-length"]) == (1000, 5)
        blocks = qmp("query-block")
        block = next((b for b in blocks if plan.device_id in b.get("qdev", "")), None)
        assert block is not None, blocks
        inserted = block["inserted"]
        assert inserted["node-name"] == plan.top_node and inserted["drv"] == "throttle"
        nodes = {n["node-name"]: n for n in qmp("query-named-block-nodes")}
        assert nodes[plan.node_names[2]]["drv"] == "copy-on-read"
        assert nodes[plan.node_names[1]]["detect_zeroes"] == "unmap"
        path = f"/machine/peripheral/{plan.device_id}"
        props = {p: qmp("qom-get", {"path": path, "property": p})
                 for p in ("werror", "rerror", "num-queues", "queue-size", "bootindex", "physical_block_size",
                           "logical_block_size", "serial", "iothread")}
        assert props == {"werror": "report", "rerror": "stop", "num-queues": 2, "queue-size": 256, "bootindex": 3,
                         "physical_block_size": 4096, "logical_block_size": 512, "serial": "tuned",
                         "iothread": "/objects/iothread1"}

        # the device reads through the filters (HMP qemu-io drains, which bypasses throttling: no timing here)
        out = qmp.qemu_io(plan.top_node, "read 0 64k")
        assert "read 65536/65536 bytes" in out, out



def test_throttle_group_and_filters_undo_cleanly(images: Any, monitor_for: Any) -> None:
    plan = build_plan(Disk.from_xml(TUNED.format(path=images.raw("undo.raw", 4), iothread="")))
    nodes = [s for s in plan.steps if s.kind != "device"]
    with start_qemu([], machine="pc") as proc:
        qmp = monitor_for(proc)
        before = {o["name"] for o in qmp("qom-list", {"path": "/objects"})}
        for step in nodes:
            qmp(step.command, step.qmp()["arguments"])
        assert {o["name"] for o in qmp("qom-list", {"path": "/objects"})} - before == {plan.steps[3].name}
        for step in reversed(nodes):
            qmp(step.undo_command, step.undo_qmp()["arguments"])
        assert not {n["node-name"] for n in qmp("query-named-block-nodes")} & set(plan.node_names)
        assert {o["name"] for o in qmp("qom-list", {"path": "/objects"})} == before


def test_plain_file_path_list(tmp_path: Path) -> None:
    """Guard: the tuned example stays plannable without QEMU (no I/O in planning)."""
    assert build_plan(Disk.from_xml(TUNED.format(path=tmp_path / "x", iothread=""))).device_id == "hl-vdb"


SLICED = """<disk type='file' device='disk'>
  <driver name='qemu' type='raw'/>
  <source file='{path}'>
    <slices><slice type='storage' offset='1048576' size='{size}'/></slices>
    <encryption format='luks' engine='qemu'><secret type='passphrase' uuid='{key}'/></encryption>
  </source>
  <target dev='vdc' bus='virtio'/>
</disk>
"""


def test_luks_volume_in_a_slice_reads_the_plaintext(images: Any, monitor_for: Any) -> None:
    """<slices>: a LUKS volume 1 MiB into a bigger file, opened through a raw offset/size node."""
    from hotluks.render.qmp import bound_command
    from hotluks.secrets import SecretValue

    inner = images.raw("inner.luks", 4)
    images.luks1(inner)
    outer = images.raw("outer.img", 6)
    with open(outer, "r+b") as fh:
        fh.seek(1 << 20)
        fh.write(inner.read_bytes())
    size = inner.stat().st_size
    images.write_pattern(f"driver=luks,key-secret=sec0,file.driver=raw,file.offset={1 << 20},file.size={size},"
                         f"file.file.driver=file,file.file.filename={outer}")
    key = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"
    plan = build_plan(Disk.from_xml(SLICED.format(path=outer, size=size, key=key)))
    assert [s.role for s in plan.steps] == ["key", "payload-protocol", "payload-slice", "luks", "device"]
    values = {key: SecretValue(images.passphrase)}
    with start_qemu([], machine="pc") as proc:
        qmp = monitor_for(proc)
        for step in plan.steps:
            cmd = bound_command(step, values, None)
            qmp(cmd["execute"], cmd["arguments"])
        out = qmp.qemu_io(plan.top_node, f"read -P {images.pattern:#x} 0 {images.length}")
        assert f"read {images.length}/{images.length} bytes" in out and "verification failed" not in out, out


def test_cli_attach_status_detach_of_a_tuned_disk(images: Any, tmp_path: Path) -> None:
    """The runner journals and undoes the throttle group and filters like any other step."""
    import json

    from testsupport.vms import Monitor, run_cli, start_vm

    vol = images.raw("runner.raw", 4)
    xml = tmp_path / "tuned.xml"
    xml.write_text(TUNED.format(path=vol, iothread="").replace("<boot order='3'/>", ""))
    state = tmp_path / "state"
    proc = start_vm()
    try:
        mon = Monitor(proc.extra_sockets[0])
        try:
            before = mon.snapshot()
            vm = f"unix:{proc.qmp_path}"
            attached = run_cli("attach", vm, xml, "--state-dir", state, "--json")
            assert attached.returncode == 0, attached.stderr
            doc = json.loads(attached.stdout)
            group = next(s["name"] for s in doc["steps"] if s["name"].endswith("-tg"))
            limits = mon.cmd("qom-get", {"path": f"/objects/{group}", "property": "limits"})
            assert (limits["bps-read"], limits["iops-total"]) == (1048576, 500)
            status = run_cli("status", vm, "--state-dir", state, "--json")
            status_doc = json.loads(status.stdout)
            for command, real in (("attach", doc), ("status", status_doc)):
                validate(command, real)  # the runner's real outputs fit the published schemas
            disk = json.loads(status.stdout)["disks"][0]
            assert disk["consistent"] and {"hl-vdb-tg", "hl-vdb-throttle", "hl-vdb-cor"} <= {
                i["name"] for i in disk["items"]}
            detached = run_cli("detach", vm, "--target", "vdb", "--state-dir", state, "-v")
            assert detached.returncode == 0, detached.stderr
            after = mon.snapshot()
            assert (after.nodes, after.objects, after.devices) == (before.nodes, before.objects, before.devices)
        finally:
            mon.close()
    finally:
        proc.stop()


def test_cold_boot_arguments_of_a_tuned_disk(images: Any) -> None:
    """`cold-cmdline` of the same disk starts a QEMU holding the throttle group with its limits."""
    import json
    import subprocess
    import sys

    xml = images.root / "tuned.xml"
    xml.write_text(TUNED.format(path=images.raw("cold.raw", 4), iothread=""))
    argv = json.loads(subprocess.run([sys.executable, "-m", "hotluks", "cold-cmdline", str(xml), "--format", "json"],
                                     capture_output=True, text=True, check=True, timeout=60).stdout)
    script = "".join(json.dumps(c) + "\n" for c in (
        {"execute": "qmp_capabilities"},
        {"execute": "qom-get", "arguments": {"path": "/objects/hl-vdb-tg", "property": "limits"}},
        {"execute": "qom-get", "arguments": {"path": "/machine/peripheral/hl-vdb", "property": "bootindex"}},
        {"execute": "quit"}))
    proc = subprocess.run(["qemu-system-x86_64", "-M", "pc", "-S", "-display", "none", "-nodefaults", "-qmp", "stdio",
                           *argv], input=script, capture_output=True, text=True, timeout=60)
    replies = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"return"')]
    assert len(replies) >= 3, proc.stdout + proc.stderr
    limits, bootindex = replies[1]["return"], replies[2]["return"]
    assert (limits["bps-read"], limits["iops-total-max-length"], bootindex) == (1048576, 5, 3)
