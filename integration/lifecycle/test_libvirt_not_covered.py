"""libvirt's `--disk-only` snapshots and backups leave a hotluks disk out: `hotluks status` says so.

libvirt builds both from the disks of its own definition, and nothing in QEMU or libvirt
refuses them because of a disk it does not know (README, Lifecycle). So they are not refused;
instead `hotluks status` (libvirt and virsh backends) and `status --all` list every snapshot,
checkpoint and backup job (push, and a pull job while it runs) since the attach that leaves the
disk out, and exit 3. A snapshot
taken before the attach is not listed. After `hotluks detach` nothing is reported.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from testsupport.libvirtd import give_to_qemu
from testsupport.schemas import validate
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]


def _wait_backup_done(virsh: Any, name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while virsh("backup-dumpxml", name).returncode == 0:  # "no domain backup job present" once done
        assert time.monotonic() < deadline, "backup job did not finish"
        time.sleep(0.2)


def test_disk_only_snapshot_and_backup_are_reported(libvirt_uri: str, guest_domain: Any, files: Path, virsh: Any,
                                                     tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    disk = make_disk(files / "disk", "detached-header-raw", "vdb", "virtio")
    for path in [files / "disk", *disk.files]:
        give_to_qemu(path)
    outputs: list[str] = []

    def status(*extra: str) -> tuple[int, Any]:
        proc = run_cli("status", *extra, *common, "--json")
        outputs.extend((proc.stdout, proc.stderr))
        doc = json.loads(proc.stdout)
        validate("status", doc)
        return proc.returncode, doc

    with guest_domain() as name:
        before = virsh("snapshot-create-as", name, "d0", "--disk-only", "--atomic")
        assert before.returncode == 0, before.stderr
        time.sleep(1.1)  # creation times are whole seconds
        attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common)
        assert attached.returncode == 0, attached.stderr
        code, doc = status(name)
        assert code == 0 and doc["disks"][0]["not_covered"] == [], doc  # d0 predates the attach

        # not refused: libvirt snapshots the disks it knows, and the VM keeps running
        snap = virsh("snapshot-create-as", name, "d1", "--disk-only", "--atomic")
        assert snap.returncode == 0, snap.stderr
        assert virsh.state(name) == "running"
        xml = virsh("snapshot-dumpxml", name, "d1").stdout
        assert "<disk name='vda'" in xml and "<disk name='vdb'" not in xml

        text = run_cli("status", name, *common)
        outputs.extend((text.stdout, text.stderr))
        assert text.returncode == 3, text.stderr
        assert "not covered by snapshot 'd1'" in text.stdout and "'d0'" not in text.stdout
        assert "leave hotluks disks out" in text.stderr

        # a push backup with a checkpoint: both name vda only
        target = files / "backup.qcow2"
        (files / "backup.xml").write_text(
            f"<domainbackup mode='push'><disks><disk name='vda' type='file'><target file='{target}'/>"
            "<driver type='qcow2'/></disk></disks></domainbackup>")
        (files / "checkpoint.xml").write_text("<domaincheckpoint><name>c1</name></domaincheckpoint>")
        backup = virsh("backup-begin", name, str(files / "backup.xml"), str(files / "checkpoint.xml"))
        assert backup.returncode == 0, backup.stderr
        _wait_backup_done(virsh, name)
        assert target.exists() and virsh.state(name) == "running"

        for backend in ("libvirt", "virsh"):
            code, doc = status(name, "--backend", backend)
            assert code == 3, (backend, doc)
            [entry] = doc["disks"]
            assert entry["status"] == "attached" and entry["consistent"], entry
            missed = {(m["kind"], m["name"], m["state"]) for m in entry["not_covered"]}
            assert missed == {("snapshot", "d1", None), ("checkpoint", "c1", None),
                              ("backup", "completed", "completed")}, (backend, missed)
        code, doc = status("--all")
        assert code == 3
        [vm] = doc["vms"]
        assert {m["name"] for m in vm["disks"][0]["not_covered"]} == {"d1", "c1", "completed"}

        # a pull backup runs until backup-end: listed as running (NBD export on 127.0.0.1 only)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        (files / "pull.xml").write_text(
            f"<domainbackup mode='pull'><server name='127.0.0.1' port='{port}'/><disks><disk name='vda' "
            f"type='file'><scratch file='{files / 'scratch.qcow2'}'/></disk></disks></domainbackup>")
        pull = virsh("backup-begin", name, str(files / "pull.xml"))
        assert pull.returncode == 0, pull.stderr
        try:
            code, doc = status(name)
            assert code == 3
            assert ("backup", "pull", "running") in {(m["kind"], m["name"], m["state"])
                                                     for m in doc["disks"][0]["not_covered"]}, doc
        finally:
            assert virsh("domjobabort", name).returncode == 0
        _wait_backup_done(virsh, name)

        detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "20")
        assert detached.returncode == 0, detached.stderr
        code, doc = status(name)
        assert code == 0 and doc["disks"] == []
    out, err = capfd.readouterr()
    assert not leaks(PASSPHRASE, [out, err, attached.stdout, attached.stderr, *outputs])
