"""The hotluks CLI on a libvirt domain: attach (passphrase from a libvirt secret), status, resize, detach,
an unknown domain, and no passphrase anywhere in the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testsupport.libvirtd import TransientDomain, define_secret, give_to_qemu, qemu_accessible_dir
from testsupport.vms import make_disk, run_cli

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


def test_cli_attach_status_detach_on_a_domain(domain: TransientDomain, backend_name: str, tmp_path: Path) -> None:
    common = ["--connect", domain.uri, "--backend", backend_name, "--state-dir", str(tmp_path / "state")]
    with qemu_accessible_dir() as workdir:
        disk = make_disk(workdir / "disks", "detached-header-qcow2", "vdb", "virtio")
        for path in disk.files:
            give_to_qemu(path)
        disk.secret_file.unlink()
        with define_secret(domain.uri, "volume", disk.secret_key, disk.passphrase):
            attached = run_cli("attach", domain.name, disk.xml_path, *common, "--json")
            status = run_cli("status", domain.name, *common, "--json")
            resized = run_cli("resize", domain.name, "vdb", "+1M", *common, "--json")
            detached = run_cli("detach", domain.name, "--target", "vdb", *common, "--json")
            after = run_cli("status", domain.name, *common, "--json")
    for proc in (attached, status, resized, detached, after):
        assert proc.returncode == 0, proc.stderr
        assert disk.passphrase.decode() not in proc.stdout + proc.stderr
    assert json.loads(attached.stdout)["ok"]
    assert [(d["target"], d["consistent"]) for d in json.loads(status.stdout)["disks"]] == [("vdb", True)]
    assert json.loads(after.stdout)["disks"] == []
    grown = json.loads(resized.stdout)  # block_resize through libvirt's monitor (or virsh) as well
    assert (grown["old_size"], grown["new_size"]) == (1 << 20, 2 << 20)


def test_cli_unknown_domain_exit_2(libvirt_uri: str, backend_name: str, tmp_path: Path) -> None:
    proc = run_cli("status", "hotluks-no-such-domain", "--connect", libvirt_uri, "--backend", backend_name,
                   "--state-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "hotluks-no-such-domain" in proc.stderr and libvirt_uri in proc.stderr
    assert "Traceback" not in proc.stderr and "libvirt:" not in proc.stderr  # no raw libvirt noise
