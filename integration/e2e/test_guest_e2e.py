"""End to end: a real Linux guest reads the plaintext of disks hotluks plugs in.

For every local shape (detached header over qcow2 and raw payloads, attached LUKS,
qcow2-native) on virtio-blk and virtio-scsi: attach through the public API or CLI,
the guest sees the disk and hashes exactly the host's plaintext, the guest writes,
detach completes through the guest's DEVICE_DELETED, the VM's nodes/objects/devices
are back to their initial state, and the guest's write decrypts on the host.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

import hotluks
from hotluks.demo.guest.vm import BootedGuest
from testsupport.vms import PASSPHRASE, PATTERN, PATTERN_LEN, Monitor, TestDisk, leaks, make_disk, run_cli

pytestmark = [pytest.mark.guest, pytest.mark.qemu, pytest.mark.slow]

SHAPES = ("detached-header-qcow2", "detached-header-raw", "attached-luks", "qcow2-native")
PAYLOAD_MB = 2
WRITE_AT = 512 * 1024


def expected_plaintext() -> bytes:
    return bytes([PATTERN]) * PATTERN_LEN + bytes(PAYLOAD_MB * 1024 * 1024 - PATTERN_LEN)


def host_plaintext(disk: TestDisk, tmp: Path) -> bytes:
    """Decrypt the disk on the host after detach: bundled engine where LUKS is ours to read, QEMU otherwise."""
    from hotluks import luks

    assert disk.payload is not None
    out = io.BytesIO()
    if disk.shape == "detached-header-raw":
        luks.decrypt_payload(disk.payload, out, disk.passphrase, header=disk.header)
    elif disk.shape == "detached-header-qcow2":
        cipher = tmp / "cipher.raw"  # the qcow2 layer holds LUKS ciphertext; unwrap it, then decrypt
        subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(disk.payload), str(cipher)],
                       check=True, capture_output=True)
        luks.decrypt_payload(cipher, out, disk.passphrase, header=disk.header)
    elif disk.shape == "attached-luks":
        luks.decrypt_payload(disk.payload, out, disk.passphrase)
    else:  # qcow2-native: LUKS inside qcow2 metadata, read back by QEMU itself
        plain = tmp / "plain.raw"
        subprocess.run(["qemu-img", "convert", "--object", f"secret,id=sec0,file={disk.secret_file}", "--image-opts",
                        f"driver=qcow2,file.filename={disk.payload},encrypt.key-secret=sec0",
                        "-O", "raw", str(plain)], check=True, capture_output=True)
        return plain.read_bytes()
    return out.getvalue()


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
@pytest.mark.parametrize("shape", SHAPES)
def test_guest_reads_plaintext_and_its_writes_decrypt_on_host(
        live_guest: BootedGuest, tmp_path: Path, shape: str, bus: str, capfd: pytest.CaptureFixture[str]) -> None:
    target = "vdb" if bus == "virtio" else "sdb"
    serial = f"hl-{shape[:8]}-{bus}"[:20]
    disk = make_disk(tmp_path, shape, target, bus, payload_mb=PAYLOAD_MB, address=f"<serial>{serial}</serial>")
    qmp = f"unix:{live_guest.qmp_paths[0]}"
    state = tmp_path / "state"
    guest_bytes = os.urandom(4096)
    with Monitor(live_guest.qmp_paths[1]) as oracle:
        before = oracle.snapshot()
        if bus == "virtio":  # through the Python API
            with hotluks.connect(qmp, state_dir=state) as vm:
                result = vm.attach(disk.disk(), secrets=disk.secrets())
                assert result.device == disk.device
        else:  # through the CLI
            proc = run_cli("attach", qmp, disk.xml_path, *disk.cli_secret(), "--state-dir", state, "--json")
            assert proc.returncode == 0, proc.stderr

        agent = live_guest.agent
        dev = agent.wait_for_device(serial, timeout=15)
        assert dev.size == PAYLOAD_MB * 1024 * 1024
        assert agent.sha256(dev.name) == hashlib.sha256(expected_plaintext()).hexdigest()
        agent.write(dev.name, WRITE_AT, guest_bytes)
        agent.sync()

        if bus == "virtio":
            with hotluks.connect(qmp, state_dir=state) as vm:
                detached = vm.detach(target, timeout=15)
            assert detached.removed[0] == f"device_del {disk.device}"
        else:
            proc = run_cli("detach", qmp, "--target", target, "--state-dir", state, "--timeout", "15")
            assert proc.returncode == 0, proc.stderr
        oracle.cmd("query-status")  # events broadcast before this reply are now in oracle.events
        assert any(e["event"] == "DEVICE_DELETED" and e.get("data", {}).get("device") == disk.device
                   for e in oracle.events), oracle.events
        agent.wait_device_gone(serial, timeout=10)
        assert oracle.snapshot() == before

    plain = host_plaintext(disk, tmp_path)
    assert plain[WRITE_AT:WRITE_AT + len(guest_bytes)] == guest_bytes
    assert plain[:PATTERN_LEN] == bytes([PATTERN]) * PATTERN_LEN
    out, err = capfd.readouterr()
    assert not leaks(PASSPHRASE, [out, err])
    assert not any(leaks(PASSPHRASE, [p.read_bytes()]) for p in state.rglob("*") if p.is_file())


def test_detach_waits_for_the_guest_device_deleted_event(live_guest: BootedGuest, tmp_path: Path) -> None:
    """With a live guest, device_del completes through ACPI eject and DEVICE_DELETED."""
    from hotluks.backends.qmp import QMPBackend
    from hotluks.runner.operator import Operator
    from hotluks.secrets import SecretValue

    disk = make_disk(tmp_path, "detached-header-raw", "vdc", "virtio", payload_mb=1,
                     address="<serial>hl-evt</serial>")

    async def run() -> list[str]:
        backend = await QMPBackend(live_guest.qmp_paths[0]).connect()
        try:
            op = Operator(backend, state_dir=tmp_path / "state")
            await op.attach(disk.disk(), {disk.secret_key: SecretValue(PASSPHRASE)})
            seen: list[str] = []
            with backend.events(["DEVICE_DELETED"]) as events:
                await op.detach("vdc", timeout=15)
                while True:
                    try:
                        seen.append(str((await events.get(0.2)).get("data", {}).get("device")))
                    except TimeoutError:
                        break
            return seen
        finally:
            await backend.close()

    seen = asyncio.run(run())
    assert disk.device in seen, seen  # each listener gets its own copy of the event
