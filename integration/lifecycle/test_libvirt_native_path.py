"""`hotluks attach --path libvirt-native`: libvirt's device API under hotluks' journal, on a real libvirtd.

A persistent guest-less q35 domain and a libvirt secret. An attached-LUKS disk attached with
`--path libvirt-native --persistent` is libvirt's own (`domblklist`, the definition), `attach
--json` says so, `status` is consistent after `virsh save`→`restore` and `destroy`→`start`
(libvirt carried it into each new QEMU), and a second attach is idempotent. `detach` goes
through libvirt: the definition loses the disk at once; the cold-plugged device of this
guest-less VM stays pending (exit 3) until `repair` after a restart, while a hot-plugged one
is gone at once. Disks libvirt cannot express, and secrets
given as files, stay on the QMP path (`auto`) or are refused (`libvirt-native`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testsupport.libvirtd import define_secret, domain_xml, give_to_qemu, qemu_accessible_dir
from testsupport.schemas import validate
from testsupport.vms import PASSPHRASE, leaks, make_disk, run_cli

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]


@pytest.fixture
def defined_domain(libvirt_uri: str) -> Iterator[str]:
    import libvirt

    conn = libvirt.open(libvirt_uri)
    name = f"hotluks-np-{uuid.uuid4().hex[:8]}"
    dom = conn.defineXML(domain_xml(name, machine="q35", root_ports=4, scsi=False))
    try:
        dom.createWithFlags(libvirt.VIR_DOMAIN_START_PAUSED)
        yield name
    finally:
        if dom.isActive():
            dom.destroy()
        dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
        conn.close()


def _status(name: str, common: list[str]) -> tuple[int, list[tuple[str, str, bool]]]:
    proc = run_cli("status", name, *common, "--json")
    return proc.returncode, [(d["target"], d["status"], d["consistent"]) for d in json.loads(proc.stdout)["disks"]]


@pytest.mark.parametrize("backend", ["libvirt", "virsh"])
def test_native_attach_is_libvirts_and_survives_save_restore_and_restart(
        libvirt_uri: str, defined_domain: str, virsh: Any, tmp_path: Path, backend: str) -> None:
    name = defined_domain
    common = ["--connect", libvirt_uri, "--backend", backend, "--state-dir", str(tmp_path / "state")]
    outputs: list[str] = []
    with qemu_accessible_dir() as work:
        disk = make_disk(work / "d", "attached-luks", "vdb", "virtio")
        header = make_disk(work / "h", "detached-header-raw", "vdc", "virtio")
        for path in [work / "d", work / "h", *disk.files, *header.files]:
            give_to_qemu(path)
        with define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE), \
                define_secret(libvirt_uri, "volume", header.secret_key, PASSPHRASE):
            dry = run_cli("attach", name, disk.xml_path, *common, "--path", "libvirt-native", "--dry-run", "--json")
            assert dry.returncode == 0, dry.stderr
            assert [c["execute"] for c in json.loads(dry.stdout)["commands"]] == ["attach-device"]
            assert "vdb" not in virsh("domblklist", name).stdout

            attached = run_cli("attach", name, disk.xml_path, *common, "--path", "libvirt-native", "--persistent",
                               "--json")
            assert attached.returncode == 0, attached.stderr
            doc = json.loads(attached.stdout)
            validate("attach", doc)
            assert (doc["path"], doc["device"]) == ("libvirt-native", "ua-hl-vdb")
            assert "vdb" in virsh("domblklist", name).stdout
            assert "dev='vdb'" in virsh("dumpxml", "--inactive", name).stdout
            assert _status(name, common) == (0, [("vdb", "attached", True)])

            saved = tmp_path / "saved.img"
            assert virsh("save", name, str(saved)).returncode == 0  # no guard: libvirt knows the disk
            restored = virsh("restore", str(saved))
            assert restored.returncode == 0, restored.stderr
            assert _status(name, common) == (0, [("vdb", "attached", True)])
            for step in (("destroy", name), ("start", name, "--paused")):
                proc = virsh(*step)
                assert proc.returncode == 0, proc.stderr
            assert "vdb" in virsh("domblklist", name).stdout
            assert _status(name, common) == (0, [("vdb", "attached", True)])

            again = run_cli("attach", name, disk.xml_path, *common, "--path", "auto", "--json")
            assert again.returncode == 0, again.stderr
            assert json.loads(again.stdout)["already_attached"] and json.loads(again.stdout)["path"] == "libvirt-native"

            refused = run_cli("attach", name, header.xml_path, *common, "--path", "libvirt-native")
            assert refused.returncode == 2 and "cannot express" in refused.stderr, refused.stderr
            files = run_cli("attach", name, disk.xml_path, *disk.cli_secret(), *common, "--path", "libvirt-native")
            assert files.returncode == 2 and "--secret" in files.stderr, files.stderr
            # --persistent on the QMP path: checked before the live attach; a refusal changes nothing
            persistent_qmp = run_cli("attach", name, header.xml_path, *common, "--persistent",
                                     "--key-dir", str(tmp_path / "keys"))  # QEMU's user cannot enter tmp_path
            assert persistent_qmp.returncode == 2 and "could not open" in persistent_qmp.stderr, persistent_qmp.stderr
            assert "nothing was attached" in persistent_qmp.stderr
            assert [t for t, *_ in _status(name, common)[1]] == ["vdb"] and not (tmp_path / "keys").exists()
            auto = run_cli("attach", name, header.xml_path, *common, "--path", "auto", "--json")
            assert auto.returncode == 0, auto.stderr
            assert json.loads(auto.stdout)["path"] == "qmp"

            assert run_cli("detach", name, "--target", "vdc", *common, "--timeout", "20").returncode == 0

            # vdb is cold-plugged in this QEMU (it came from the definition): without a guest to
            # acknowledge, its unplug stays pending (exit 3), while libvirt drops it from the definition
            pending = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "5", "--json")
            assert pending.returncode == 3 and "UnplugPendingError" in pending.stdout, pending.stdout
            assert "dev='vdb'" not in virsh("dumpxml", "--inactive", name).stdout
            for step in (("destroy", name), ("start", name, "--paused")):
                assert virsh(*step).returncode == 0
            assert "vdb" not in virsh("domblklist", name).stdout
            repaired = run_cli("repair", name, *common, "--json")
            assert repaired.returncode == 0, repaired.stderr
            assert [a["action"] for a in json.loads(repaired.stdout)["actions"]] == ["forgotten"]
            assert _status(name, common) == (0, [])

            # hot-plugged through libvirt into a running QEMU, a detach completes through libvirt
            hot = run_cli("attach", name, disk.xml_path, *common, "--path", "libvirt-native", "--json")
            assert hot.returncode == 0 and json.loads(hot.stdout)["path"] == "libvirt-native", hot.stderr
            assert "dev='vdb'" not in virsh("dumpxml", "--inactive", name).stdout  # not --persistent
            detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "20", "--json")
            assert detached.returncode == 0, detached.stdout
            assert json.loads(detached.stdout)["removed"] == ["detach-device ua-hl-vdb"]
            assert "vdb" not in virsh("domblklist", name).stdout
            assert _status(name, common) == (0, [])
            outputs += [dry.stdout, attached.stdout, again.stdout, refused.stderr, auto.stdout, pending.stdout,
                        hot.stdout, detached.stdout]
    assert not leaks(PASSPHRASE, outputs)


def test_cancelled_native_attach_waits_for_libvirt_then_rolls_back(libvirt_uri: str, defined_domain: str,
                                                                   virsh: Any, tmp_path: Path) -> None:
    """Cancellation while libvirt attaches (an agent's timeout, SIGINT): libvirt's call finishes, then the
    rollback detaches what it did: RolledBack, no disk in the domain, no record."""
    import asyncio

    from hotluks.backends.libvirt import LibvirtBackend
    from hotluks.errors import RolledBackError
    from hotluks.runner.operator import Operator

    state = tmp_path / "state"
    with qemu_accessible_dir() as work:
        disk = make_disk(work / "d", "attached-luks", "vdb", "virtio")
        for path in [work / "d", *disk.files]:
            give_to_qemu(path)
        with define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
            async def go() -> None:
                backend = await LibvirtBackend(defined_domain, libvirt_uri).connect()
                try:
                    op = Operator(backend, state_dir=state)
                    task = asyncio.ensure_future(op.attach(disk.disk(), path="libvirt-native", preflight=False))
                    records = list(state.glob("*/vdb.json"))
                    while not (records and '"state":"started"' in records[0].read_text()):
                        assert not task.done(), task
                        await asyncio.sleep(0.001)
                        records = list(state.glob("*/vdb.json"))
                    task.cancel()
                    with pytest.raises(RolledBackError, match="rolled back: detach-device ua-hl-vdb"):
                        await task
                    assert await op.status() == []
                finally:
                    await backend.close()

            asyncio.run(go())
    assert "vdb" not in virsh("domblklist", defined_domain).stdout


@pytest.mark.parametrize("backend", ["libvirt", "virsh"])
def test_default_attach_on_a_domain_is_libvirts_own(libvirt_uri: str, defined_domain: str, virsh: Any,
                                                    tmp_path: Path, backend: str) -> None:
    """No --path: an attached-LUKS disk with its secret in libvirt's store goes through libvirt's device
    API (`auto` is the default under the libvirt and virsh backends) and shows in `domblklist`; `-v`
    says which path and why. A detach takes it away again."""
    name = defined_domain
    common = ["--connect", libvirt_uri, "--backend", backend, "--state-dir", str(tmp_path / "state")]
    with qemu_accessible_dir() as work:
        disk = make_disk(work / "d", "attached-luks", "vdb", "virtio")
        for path in [work / "d", *disk.files]:
            give_to_qemu(path)
        disk.secret_file.unlink()  # the passphrase lives in libvirt only
        with define_secret(libvirt_uri, "volume", disk.secret_key, PASSPHRASE):
            attached = run_cli("-v", "attach", name, disk.xml_path, *common, "--json")
            assert attached.returncode == 0, attached.stderr
            doc = json.loads(attached.stdout)
            validate("attach", doc)
            assert (doc["path"], doc["device"], doc["persistent"]) == ("libvirt-native", "ua-hl-vdb", False)
            assert ("through libvirt's device API (--path auto: libvirt expresses a attached-luks disk and "
                    "holds its secrets)") in attached.stderr
            assert "vdb" in virsh("domblklist", name).stdout
            assert _status(name, common) == (0, [("vdb", "attached", True)])
            again = run_cli("attach", name, disk.xml_path, *common, "--persistent", "--json")
            assert again.returncode == 2, again.stderr  # asked for more than this run: refused, not a silent no
            assert "for this run only; nothing changed" in again.stderr
            validate("attach", json.loads(again.stdout))
            assert "vdb" not in virsh("dumpxml", "--inactive", name).stdout
            detached = run_cli("detach", name, "--target", "vdb", *common, "--timeout", "20", "--json")
            assert detached.returncode == 0, detached.stdout
            validate("detach", json.loads(detached.stdout))
            assert "vdb" not in virsh("domblklist", name).stdout
    assert not leaks(PASSPHRASE, [attached.stdout, attached.stderr, detached.stdout])
