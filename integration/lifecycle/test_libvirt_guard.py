"""libvirt lifecycle operations on a domain with a hotluks disk: refused up front, the VM keeps running.

A real guest in a persistent libvirt domain (with a libvirt-known qcow2 disk, so that
internal snapshots are possible at all) gets a detached-header disk from hotluks. libvirt
cannot carry that disk through save/restore, managedsave/start or snapshot revert, so
hotluks' migration guard makes QEMU refuse `virsh save`, `virsh managedsave` and
`virsh snapshot-create-as` before anything happens: each fails, the domain still runs,
and the guest still reads the same sha256 from the disk. After `hotluks detach` the guard
is gone and `virsh save` + `virsh restore` work again (the control). `virsh destroy` +
`virsh start` cannot be refused: the domain starts again, without the disk. `--disk-only`
snapshots and backups are not refused either: `test_libvirt_not_covered.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.guest.agent import SyncGuestAgent
from testsupport.libvirtd import define_secret, give_to_qemu
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
SERIAL = "hl-guarded"


@pytest.fixture
def persistent_guest(guest_domain: Any) -> Iterator[str]:
    with guest_domain() as name:
        yield name


def test_save_managedsave_snapshot_refused_while_guarded(libvirt_uri: str, persistent_guest: str, files: Path,
                                                         virsh: Any, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    name = persistent_guest
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    work = files / "disk"
    disk = make_disk(work, "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    for path in [work, *disk.files]:
        give_to_qemu(path)
    disk.secret_file.unlink()
    agent = SyncGuestAgent(files / "agent.sock", timeout=30)
    try:
        agent.wait_ready(180)
        with define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
            attached = run_cli("attach", name, disk.xml_path, *common, "--path", "qmp", "--json")
        assert attached.returncode == 0, attached.stderr
        dev = agent.wait_for_device(SERIAL, timeout=20)
        before = agent.sha256(dev.name)
        reasons = virsh.monitor(name, "query-migrate").get("blocked-reasons", [])
        assert any("hlg-vdb" in r for r in reasons), reasons

        saved = tmp_path / "saved.img"
        refused = {
            "save": virsh("save", name, str(saved)),
            "managedsave": virsh("managedsave", name),
            "snapshot": virsh("snapshot-create-as", name, "s1"),
        }
        for what, proc in refused.items():
            assert proc.returncode != 0, f"{what} was not refused: {proc.stdout}"
            assert "hlg-vdb" in proc.stderr, f"{what}: {proc.stderr}"
            assert virsh.state(name) == "running", what
        assert not saved.exists()
        assert "no" in virsh("dominfo", name).stdout.split("Managed save:")[1].split("\n")[0]
        assert virsh("snapshot-list", name, "--name").stdout.strip() == ""
        agent.command("drop-caches")
        assert agent.sha256(dev.name) == before  # the guest still reads the same disk

        detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "20")
        assert detached.returncode == 0, detached.stderr
        agent.wait_device_gone(SERIAL, timeout=10)
        assert virsh.monitor(name, "query-migrate").get("blocked-reasons", []) == []
        assert not any(n["node-name"].startswith("hlg-")
                       for n in virsh.monitor(name, "query-named-block-nodes", flat=True))
        agent.close()

        # the control: without the hotluks disk, libvirt's save/restore works
        assert virsh("save", name, str(saved)).returncode == 0
        restored = virsh("restore", str(saved))
        assert restored.returncode == 0, restored.stderr
        assert virsh.state(name) == "running"
        agent = SyncGuestAgent(files / "agent.sock", timeout=30)
        agent.wait_ready(60)
    finally:
        agent.close()
    out, err = capfd.readouterr()
    assert not leaks(PASSPHRASE, [out, err, attached.stdout, attached.stderr])


def test_destroy_start_is_not_blocked(libvirt_uri: str, persistent_guest: str, files: Path, virsh: Any,
                                      tmp_path: Path) -> None:
    """destroy cannot be refused; the guarded domain starts again (without the disk)."""
    name = persistent_guest
    common = ["--connect", libvirt_uri, "--state-dir", str(tmp_path / "state")]
    disk = make_disk(files / "disk", "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>")
    for path in [files / "disk", *disk.files]:
        give_to_qemu(path)
    attached = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common, "--path", "qmp")
    assert attached.returncode == 0, attached.stderr
    assert virsh("destroy", name).returncode == 0
    started = virsh("start", name)
    assert started.returncode == 0, started.stderr
    assert virsh.state(name) == "running"
    nodes = {n["node-name"] for n in virsh.monitor(name, "query-named-block-nodes", flat=True)}
    assert not any(n.startswith(("hl-", "hlg-")) for n in nodes), nodes
