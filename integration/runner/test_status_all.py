"""``hotluks status --all``: the disks of several real QEMUs from one state directory, a killed one ``lost``."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from testsupport.schemas import validate
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli, start_vm

pytestmark = pytest.mark.qemu


def test_status_all_lists_every_vm_and_a_killed_qemu_is_lost(tmp_path: Path) -> None:
    state = ["--state-dir", tmp_path / "state"]
    first, second = start_vm(), start_vm()
    try:
        disks = {}
        for vm, target, shape in ((first, "vdb", "detached-header-raw"), (first, "vdc", "attached-luks"),
                                  (second, "vdb", "attached-luks")):
            disk = make_disk(tmp_path / f"{vm.popen.pid if vm.popen else 0}-{target}", shape, target)
            attached = run_cli("attach", vm.qmp_path, disk.xml_path, *disk.cli_secret(), *state)
            assert attached.returncode == 0, attached.stderr
            disks[(vm.qmp_path, target)] = disk

        both = run_cli("status", "--all", *state, "--json")
        assert both.returncode == 0, both.stderr
        doc = json.loads(both.stdout)
        validate("status", doc)
        seen = {(v["vm"], d["target"]): (d["status"], d["consistent"]) for v in doc["vms"] for d in v["disks"]}
        assert seen == {(str(first.qmp_path), "vdb"): ("attached", True),
                        (str(first.qmp_path), "vdc"): ("attached", True),
                        (str(second.qmp_path), "vdb"): ("attached", True)}
        assert all(v["reached"] and v["backend"] == "qmp" for v in doc["vms"])

        assert second.popen is not None
        os.kill(second.popen.pid, signal.SIGKILL)  # the QEMU dies; its socket file may stay behind
        second.popen.wait(10)
        after = run_cli("status", "--all", *state, "--json")
        assert after.returncode == 3, after.stderr
        doc = json.loads(after.stdout)
        validate("status", doc)
        by_vm = {v["vm"]: v for v in doc["vms"]}
        gone = by_vm[str(second.qmp_path)]
        assert not gone["reached"] and [(d["target"], d["status"]) for d in gone["disks"]] == [("vdb", "lost")]
        assert [(d["target"], d["status"]) for d in by_vm[str(first.qmp_path)]["disks"]] == [
            ("vdb", "attached"), ("vdc", "attached")]
        text = run_cli("status", *state)  # no VM: the same listing, for people
        assert text.returncode == 3 and "lost" in text.stdout and str(second.qmp_path) in text.stdout
        assert not leaks(PASSPHRASE, [both.stdout, after.stdout, text.stdout, text.stderr])

        for target in ("vdb", "vdc"):
            assert run_cli("detach", first.qmp_path, "--target", target, *state).returncode == 0
        last = run_cli("status", "--all", *state, "--json")
        assert last.returncode == 3  # only the lost disk is left
        assert [v["vm"] for v in json.loads(last.stdout)["vms"]] == [str(second.qmp_path)]

        # `detach` cannot reach a dead QEMU; `repair --all` forgets what can never run again
        forgot = run_cli("repair", "--all", *state, "--json")
        assert forgot.returncode == 0, forgot.stderr
        doc = json.loads(forgot.stdout)
        validate("repair", doc)
        assert [(f["vm"], f["target"]) for f in doc["forgotten"]] == [(str(second.qmp_path), "vdb")]
        clean = run_cli("status", "--all", *state, "--json")
        assert clean.returncode == 0 and json.loads(clean.stdout)["vms"] == []
    finally:
        first.stop()
        second.stop()
