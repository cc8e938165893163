"""`virsh migrate --live` between two libvirtd instances on this host (the shared daemon and a
private one in its own mount namespace, with a distinct host UUID and hotluks' hook).

- A detached-header disk in the persistent definition (`cold-cmdline --format libvirt`)
  migrates with the domain: the guest reads the same sha256 on the destination.
- When the destination's QEMU could not open the disk's files, the destination's hook
  refuses the incoming migration up front: `virsh migrate` fails and the domain keeps
  running on the source, reading the same data.
- A disk hot-plugged by hotluks (libvirt cannot carry it) is refused at the source by the
  migration guard; the domain keeps running.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.guest.agent import SyncGuestAgent
from testsupport.libvirtd import give_to_qemu
from testsupport.vms import PASSPHRASE, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
SERIAL = "hl-migrating"
ADDRESS = "<address type='pci' domain='0' bus='0' slot='0x1f' function='0'/>"


def guest_sha(files: Path, socket: str = "agent.sock") -> str:
    with SyncGuestAgent(files / socket, timeout=30) as agent:
        agent.wait_ready(180)
        dev = agent.wait_for_device(SERIAL, timeout=30)
        agent.command("drop-caches")
        return agent.sha256(dev.name)


def migrate(virsh: Any, name: str, dest_uri: str, tmp: Path) -> Any:
    """Live migration; on the destination the agent socket is agent2.sock (the source's QEMU removes
    its own socket file when it exits, which would take a same-path socket of the destination along)."""
    port = 49152 + uuid.uuid4().int % 10000
    xml = tmp / "dest.xml"
    xml.write_text(virsh("dumpxml", "--migratable", name).stdout.replace("/agent.sock'", "/agent2.sock'"))
    return virsh("migrate", "--live", "--persistent", "--undefinesource", "--unsafe", "--xml", str(xml),
                 "--persistent-xml", str(xml), name, dest_uri, f"tcp://127.0.0.1:{port}", timeout=300)


def test_persistent_disk_migrates_and_a_bad_destination_is_refused(
        libvirt_uri: str, hooked_libvirtd: Any, guest_domain: Any, virsh: Any, virsh_at: Any, files: Path,
        tmp_path: Path) -> None:
    dest = virsh_at(hooked_libvirtd.uri)
    work = files / "disk"
    disk = make_disk(work, "detached-header-qcow2", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>{ADDRESS}")
    assert disk.payload is not None and disk.header is not None
    for path in (work, disk.payload, disk.header):
        give_to_qemu(path)
    secret = tmp_path / "pass"
    secret.write_bytes(PASSPHRASE)
    cold = run_cli("cold-cmdline", disk.xml_path, "--format", "libvirt", "--secret", f"{disk.secret_key}={secret}",
                   "--key-file", files / "hotluks.key")
    assert cold.returncode == 0, cold.stderr

    with guest_domain(cold.stdout) as name:
        with SyncGuestAgent(files / "agent.sock", timeout=30) as agent:
            agent.wait_ready(180)
            dev = agent.wait_for_device(SERIAL, timeout=30)
            agent.write(dev.name, 8192, os.urandom(4096))
            agent.sync()
        before = guest_sha(files)

        os.chown(files / "hotluks.key", 0, 0)  # the destination's QEMU could not read the key
        refused = migrate(virsh, name, hooked_libvirtd.uri, tmp_path)
        assert refused.returncode != 0
        assert "hotluks: refusing the incoming migration" in refused.stderr, refused.stderr
        assert virsh.state(name) == "running"
        assert guest_sha(files) == before

        give_to_qemu(files / "hotluks.key")
        moved = migrate(virsh, name, hooked_libvirtd.uri, tmp_path)
        assert moved.returncode == 0, moved.stderr
        try:
            assert dest.state(name) == "running"
            assert virsh("domstate", name).returncode != 0  # undefined on the source
            assert guest_sha(files, "agent2.sock") == before
        finally:
            dest("destroy", name)
            dest("undefine", name)


def test_hot_plugged_disk_blocks_migration_at_the_source(
        libvirt_uri: str, hooked_libvirtd: Any, guest_domain: Any, virsh: Any, files: Path, tmp_path: Path) -> None:
    work = files / "disk"
    disk = make_disk(work, "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    for path in [work, *disk.files]:
        give_to_qemu(path)
    with guest_domain() as name:
        attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), "--path", "qmp", "--connect", libvirt_uri,
                           "--state-dir", tmp_path / "state")
        assert attached.returncode == 0, attached.stderr
        before = guest_sha(files)
        refused = migrate(virsh, name, hooked_libvirtd.uri, tmp_path)
        assert refused.returncode != 0 and "hlg-vdb" in refused.stderr, refused.stderr
        assert virsh.state(name) == "running"
        assert guest_sha(files) == before
