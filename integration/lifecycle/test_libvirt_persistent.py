"""A detached-header disk in a persistent libvirt definition (`cold-cmdline --format libvirt`) lives
through every lifecycle operation: save→restore, managedsave→start, internal snapshot
create→revert, destroy→start. After each, the guest reads the same sha256 from the disk
(past its page cache). The passphrase is nowhere in the domain XML, the QEMU command line,
the domain log or the key file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.guest.agent import SyncGuestAgent
from testsupport.libvirtd import give_to_qemu
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
SERIAL = "hl-persist"
ADDRESS = "<address type='pci' domain='0' bus='0' slot='0x1f' function='0'/>"


def guest_sha(files: Path) -> str:
    """sha256 of the hotluks disk as the (possibly new) QEMU's guest reads it, caches dropped."""
    with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
        agent.wait_ready(180)
        dev = agent.wait_for_device(SERIAL, timeout=30)
        agent.command("drop-caches")
        return agent.sha256(dev.name)


def test_persistent_disk_survives_every_lifecycle_operation(guest_domain: Any, virsh: Any, files: Path,
                                                            tmp_path: Path) -> None:
    work = files / "disk"
    disk = make_disk(work, "detached-header-qcow2", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>{ADDRESS}")
    for path in [work, disk.payload, disk.header]:
        assert path is not None
        give_to_qemu(path)
    secret = tmp_path / "pass"  # root only: the QEMU user never reads the passphrase
    secret.write_bytes(PASSPHRASE)
    secret.chmod(0o600)
    disk.secret_file.unlink()
    cold = run_cli("cold-cmdline", disk.xml_path, "--format", "libvirt", "--secret", f"{disk.secret_key}={secret}",
                   "--key-file", files / "hotluks.key")
    assert cold.returncode == 0, cold.stderr
    key = files / "hotluks.key"
    assert key.stat().st_mode & 0o777 == 0o400 and key.stat().st_uid != 0

    with guest_domain(cold.stdout) as name:
        with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
            agent.wait_ready(180)
            dev = agent.wait_for_device(SERIAL, timeout=30)
            agent.write(dev.name, 4096, os.urandom(4096))  # make the disk's content this test's own
            agent.sync()
        reference = guest_sha(files)
        seen = {}

        saved = tmp_path / "saved.img"
        for step in (("save", name, str(saved)), ("restore", str(saved))):
            proc = virsh(*step)
            assert proc.returncode == 0, f"{step}: {proc.stderr}"
        seen["save→restore"] = guest_sha(files)

        for step in (("managedsave", name), ("start", name)):
            proc = virsh(*step)
            assert proc.returncode == 0, f"{step}: {proc.stderr}"
        seen["managedsave→start"] = guest_sha(files)

        for step in (("snapshot-create-as", name, "s1"), ("snapshot-revert", name, "s1")):
            proc = virsh(*step)
            assert proc.returncode == 0, f"{step}: {proc.stderr}"
        assert virsh.state(name) == "running"
        seen["snapshot create→revert"] = guest_sha(files)

        for step in (("destroy", name), ("start", name)):
            proc = virsh(*step)
            assert proc.returncode == 0, f"{step}: {proc.stderr}"
        seen["destroy→start"] = guest_sha(files)

        assert seen == dict.fromkeys(seen, reference)
        texts = [virsh("dumpxml", name).stdout, virsh("dumpxml", "--inactive", name).stdout,
                 virsh("snapshot-dumpxml", name, "s1").stdout, key.read_bytes()]
        pid = Path(f"/run/libvirt/qemu/{name}.pid").read_text().strip()
        texts.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        log = Path(f"/var/log/libvirt/qemu/{name}.log")
        if log.exists():
            texts.append(log.read_bytes())
        assert not leaks(PASSPHRASE, texts)
        assert not leaks(PASSPHRASE, [cold.stdout, cold.stderr])
