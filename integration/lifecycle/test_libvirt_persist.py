"""`hotluks persist`: a hot-plugged detached-header disk written into the domain's definition.

After `hotluks attach` + `hotluks persist`, `virsh destroy` + `virsh start` brings the disk
back at the same place (the guest reads the same sha256, `hotluks status` finds its nodes),
and the restarted domain — whose live XML now carries the disk — survives save→restore.
A disk whose files QEMU could not open at the next start is refused up front, the
definition unchanged. `persist --remove` takes it out again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from testsupport.libvirtd import define_secret, give_to_qemu, guest_sha
from testsupport.schemas import validate
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
SERIAL = "hl-persisted"



def test_persisted_disk_comes_back_after_destroy_start(libvirt_uri: str, guest_domain: Any, virsh: Any,
                                                       files: Path, tmp_path: Path) -> None:
    common = ["--connect", libvirt_uri]
    state = ["--state-dir", str(tmp_path / "state")]
    work = files / "disk"
    disk = make_disk(work, "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    disk.secret_file.unlink()
    keys = ["--key-dir", str(files / "keys")]
    with guest_domain() as name, define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
        for path in (work, disk.payload, disk.header):  # attach refuses files QEMU's user could not open
            assert path is not None
            give_to_qemu(path)
        attached = run_cli("attach", name, disk.xml_path, *common, *state, "--path", "qmp")
        assert attached.returncode == 0, attached.stderr
        before = guest_sha(files, SERIAL)
        definition = virsh("dumpxml", "--inactive", name).stdout

        assert disk.payload is not None
        os.chown(disk.payload, 0, 0)  # the running QEMU keeps its descriptor; the next one could not open it
        os.chmod(disk.payload, 0o600)
        refused = run_cli("persist", name, disk.xml_path, *common, *keys)
        assert refused.returncode == 2 and "hl-vdb-proto" in refused.stderr and str(disk.payload) in refused.stderr
        assert virsh("dumpxml", "--inactive", name).stdout == definition

        for path in (work, disk.payload, disk.header):
            assert path is not None
            give_to_qemu(path)
        persisted = run_cli("persist", name, disk.xml_path, *common, *keys, "--json")
        assert persisted.returncode == 0, persisted.stderr
        assert json.loads(persisted.stdout)["in_definition"]
        validate("persist", json.loads(persisted.stdout))
        assert not leaks(PASSPHRASE, [virsh("dumpxml", "--inactive", name).stdout])

        for step in (("destroy", name), ("start", name)):
            proc = virsh(*step)
            assert proc.returncode == 0, f"{step}: {proc.stderr}"
        assert guest_sha(files, SERIAL) == before
        status = run_cli("status", name, *common, *state, "--json")
        assert status.returncode == 0, status.stderr
        assert [(d["target"], d["consistent"]) for d in json.loads(status.stdout)["disks"]] == [("vdb", True)]

        saved = tmp_path / "saved.img"
        assert virsh("save", name, str(saved)).returncode == 0  # no guard: libvirt's XML now carries the disk
        restored = virsh("restore", str(saved))
        assert restored.returncode == 0, restored.stderr
        assert guest_sha(files, SERIAL) == before

        removed = run_cli("persist", name, "--target", "vdb", "--remove", *common)
        assert removed.returncode == 0, removed.stderr
        assert "hl-vdb" not in virsh("dumpxml", "--inactive", name).stdout


def test_attach_persistent_is_checked_first_and_comes_back_after_destroy_start(
        libvirt_uri: str, guest_domain: Any, virsh: Any, files: Path, tmp_path: Path) -> None:
    """`attach --persistent` of a detached-header disk (the default path: QMP, libvirt cannot express it)
    refuses up front, changing nothing, when the next QEMU could not open a file; then attaches live and
    writes the definition in one go: after destroy + start the guest reads the same sha256 and `status`
    says attached (exit 0). `detach` takes it out of the definition again."""
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    work = files / "disk"
    disk = make_disk(work, "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    disk.secret_file.unlink()
    keys = files / "keys"
    with guest_domain() as name, define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
        assert disk.payload is not None and disk.header is not None
        give_to_qemu(work)
        give_to_qemu(disk.header)
        os.chown(disk.payload, 0, 0)  # the next QEMU could not open it: refused before the live attach
        os.chmod(disk.payload, 0o600)
        definition = virsh("dumpxml", "--inactive", name).stdout
        refused = run_cli("attach", name, disk.xml_path, *common, "--persistent", "--key-dir", str(keys), "--json")
        assert refused.returncode == 2, refused.stdout
        assert "hl-vdb-proto" in refused.stdout and str(disk.payload) in refused.stdout
        assert virsh("dumpxml", "--inactive", name).stdout == definition and not keys.exists()
        assert "hl-vdb" not in virsh("dumpxml", name).stdout
        assert json.loads(run_cli("status", name, *common, "--json").stdout)["disks"] == []

        give_to_qemu(disk.payload)
        attached = run_cli("-v", "attach", name, disk.xml_path, *common, "--persistent", "--key-dir", str(keys),
                           "--json")
        assert attached.returncode == 0, attached.stderr
        doc = json.loads(attached.stdout)
        validate("attach", doc)
        assert (doc["path"], doc["persistent"], doc["key_file"]) == ("qmp", True, str(keys / f"{_uuid(virsh, name)}.key"))
        assert "through QMP (--path auto: libvirt cannot express a detached-header-raw disk)" in attached.stderr
        assert not leaks(PASSPHRASE, [virsh("dumpxml", "--inactive", name).stdout, attached.stdout, attached.stderr])
        before = guest_sha(files, SERIAL)

        for step in (("destroy", name), ("start", name)):
            proc = virsh(*step)
            assert proc.returncode == 0, f"{step}: {proc.stderr}"
        assert guest_sha(files, SERIAL) == before
        status = run_cli("status", name, *common, "--json")
        assert status.returncode == 0, status.stderr
        assert [(d["target"], d["status"], d["consistent"]) for d in json.loads(status.stdout)["disks"]] == [
            ("vdb", "attached", True)]

        detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "60", "--json")
        assert detached.returncode == 0, detached.stdout
        validate("detach", json.loads(detached.stdout))
        assert json.loads(detached.stdout)["persistent"]
        assert "hl-vdb" not in virsh("dumpxml", "--inactive", name).stdout


def _uuid(virsh: Any, name: str) -> str:
    return str(virsh("domuuid", name).stdout.strip())
