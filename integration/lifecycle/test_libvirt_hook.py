"""hotluks' libvirt hook, installed into a private libvirtd's hooks directory, refuses up front.

A persistent domain carries a detached-header disk in `<qemu:commandline>`
(`cold-cmdline --format libvirt`). When QEMU could not open one of its files, the hook
refuses `virsh start` and `virsh restore` with a message naming the node and the file,
before QEMU starts (the saved image stays and restores once the file is fixed). Then the
guest reads the same sha256 as before the save. `hotluks hook uninstall` removes the hook.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from testsupport.libvirtd import give_to_qemu, guest_sha
from testsupport.vms import PASSPHRASE, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.libvirt, pytest.mark.slow]
SERIAL = "hl-hooked"
ADDRESS = "<address type='pci' domain='0' bus='0' slot='0x1f' function='0'/>"



def test_hook_refuses_start_and_restore_until_qemu_can_open_the_files(
        hooked_libvirtd: Any, guest_domain_at: Any, virsh_at: Any, files: Path, tmp_path: Path) -> None:
    import libvirt

    hooked = hooked_libvirtd
    virsh = virsh_at(hooked.uri)
    work = files / "disk"
    disk = make_disk(work, "detached-header-raw", "vdb", "virtio", address=f"<serial>{SERIAL}</serial>{ADDRESS}")
    assert disk.payload is not None and disk.header is not None
    give_to_qemu(work)
    secret = tmp_path / "pass"
    secret.write_bytes(PASSPHRASE)
    cold = run_cli("cold-cmdline", disk.xml_path, "--format", "libvirt", "--secret", f"{disk.secret_key}={secret}",
                   "--key-file", files / "hotluks.key")
    assert cold.returncode == 0, cold.stderr

    # the payload and header still belong to root: start is refused before QEMU runs
    with pytest.raises(libvirt.libvirtError, match="hotluks: refusing the start") as refused:
        with guest_domain_at(hooked.uri, cold.stdout):
            pass
    assert "hl-vdb-proto" in str(refused.value) and str(disk.payload) in str(refused.value)

    give_to_qemu(disk.payload)
    give_to_qemu(disk.header)
    with guest_domain_at(hooked.uri, cold.stdout) as name:
        before = guest_sha(files, SERIAL)
        saved = tmp_path / "saved.img"
        assert virsh("save", name, str(saved)).returncode == 0
        os.chown(disk.header, 0, 0)
        os.chmod(disk.header, 0o600)
        restore = virsh("restore", str(saved))
        assert restore.returncode != 0
        assert "hotluks: refusing the restore" in restore.stderr and "hl-vdb-hdr-proto" in restore.stderr
        assert virsh.state(name) == "shut off" and saved.exists()
        give_to_qemu(disk.header)
        restore = virsh("restore", str(saved))
        assert restore.returncode == 0, restore.stderr
        assert guest_sha(files, SERIAL) == before

    proc = run_cli("hook", "uninstall", "--hooks-dir", hooked.hooks)
    assert proc.returncode == 0 and not (hooked.hooks / "qemu.d" / "50-hotluks").exists()
