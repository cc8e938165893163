"""Secret hygiene: with a master key, the passphrase never crosses the QMP socket (raw, base64 or hex),
yet QEMU decrypts the disk; nor does it appear in CLI output (plain, --json, --dry-run, -vv logs),
error messages, or any file of the state directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.qmpproxy import QMPProxy, is_mutating
from testsupport.vms import (
    Monitor,
    leaks,
    make_disk,
    qemu_io_read,
    run_cli,
    secret_forms,
    start_vm,
    write_master_key,
)

pytestmark = pytest.mark.qemu

PASSPHRASE = b"Hyg1ene-Sentinel-passphrase-93f1"


@pytest.fixture
def keyed_vm(tmp_path: Path) -> Iterator[tuple[QemuProcess, Path]]:
    key = write_master_key(tmp_path / "master.key")
    proc = start_vm(master_key=key)
    try:
        yield proc, key
    finally:
        proc.stop()


def _state_files(state_dir: Path) -> list[bytes]:
    return [p.read_bytes() for p in state_dir.rglob("*") if p.is_file()]


def test_detector_finds_every_encoding() -> None:
    """The leak detector itself: a secret embedded in base64 at any alignment, or hex, is found."""
    import base64

    for prefix in (b"", b"x", b"xy", b"xyz"):
        blob = base64.b64encode(prefix + PASSPHRASE + b"tail")
        assert leaks(PASSPHRASE, [blob]), prefix
    assert leaks(PASSPHRASE, [b"..." + PASSPHRASE.hex().encode() + b"..."])
    assert leaks(PASSPHRASE, [PASSPHRASE.decode()])
    assert not leaks(PASSPHRASE, [b"Hyg1ene-Sentinel", base64.b64encode(b"Hyg1ene")])
    assert all(len(f) >= 8 for f in secret_forms(PASSPHRASE))


def test_no_secret_on_the_wire_or_anywhere_with_master_key(keyed_vm: tuple[QemuProcess, Path], tmp_path: Path,
                                                          ) -> None:
    vm, key = keyed_vm
    state_dir = tmp_path / "state"
    disks = [make_disk(tmp_path / "d", "detached-header-qcow2", "vdb", passphrase=PASSPHRASE),
             make_disk(tmp_path / "d", "qcow2-native", "sdb", "scsi", passphrase=PASSPHRASE)]
    seen: list[Any] = []  # every output, message and file to search

    def cli(*args: str | Path) -> Any:
        proc = run_cli("-vv", *args, "--state-dir", state_dir, "--master-key", key)
        seen.extend([proc.stdout, proc.stderr])
        return proc

    with QMPProxy(vm.qmp_path) as proxy, Monitor(vm.extra_sockets[0]) as monitor:
        sock = proxy.path
        for disk in disks:
            dry = cli("attach", sock, disk.xml_path, *disk.cli_secret(), "--dry-run", "--json")
            assert dry.returncode == 0, dry.stderr
            done = cli("attach", sock, disk.xml_path, *disk.cli_secret(), "--json")
            assert done.returncode == 0, done.stderr
            # -vv really logged every step at debug level (in redacted form)
            assert 'DEBUG: step 1/' in done.stderr and '"execute": "object-add"' in done.stderr
            assert '"data": "<redacted>"' in done.stderr
            top = json.loads(done.stdout)["top_node"]
            assert qemu_io_read(monitor, vm, top) == "ok"  # QEMU decrypted the sealed secret
            seen.extend(_state_files(state_dir))
        assert cli("status", sock, "--json").returncode == 0
        assert cli("status", sock).returncode == 0
        # a failing attach (wrong passphrase, no preflight) and a refused one: error texts too
        bad = make_disk(tmp_path / "bad", "attached-luks", "vdc", passphrase=PASSPHRASE)
        bad.secret_file.write_bytes(PASSPHRASE[::-1])
        assert cli("attach", sock, bad.xml_path, *bad.cli_secret(), "--no-preflight", "--json").returncode == 1
        assert cli("attach", sock, bad.xml_path, *bad.cli_secret()).returncode == 2
        # the QEMU error for a wrong passphrase (sent sealed): not leaking the attempted value either
        for disk in disks:
            assert cli("detach", sock, "--target", disk.target, "--json").returncode == 0
        seen.extend(_state_files(state_dir))
        wire = proxy.transcript()
        object_adds = [m for m in proxy.commands if m.get("execute") == "object-add"]
    assert len(object_adds) == 3 and all(m["arguments"].get("keyid") == "masterKey0" for m in object_adds)
    assert all("iv" in m["arguments"] for m in object_adds)
    assert not leaks(PASSPHRASE, [wire]), "passphrase on the QMP wire"
    assert not leaks(PASSPHRASE[::-1], [wire]), "wrong passphrase on the QMP wire"
    assert not leaks(PASSPHRASE, seen), "passphrase in output, logs or state files"
    assert not leaks(PASSPHRASE[::-1], seen)


def test_negative_control_without_master_key_the_wire_shows_it(vm: QemuProcess, monitor: Monitor,
                                                                tmp_path: Path) -> None:
    """Without a master key QEMU needs the secret in base64: the recording proxy does see it.

    This proves the recorder and detector would catch a leak; outputs and state stay clean.
    """
    disk = make_disk(tmp_path, "attached-luks", "vdb", passphrase=PASSPHRASE)
    state_dir = tmp_path / "state"
    with QMPProxy(vm.qmp_path) as proxy:
        proc = run_cli("-vv", "attach", proxy.path, disk.xml_path, *disk.cli_secret(), "--state-dir", state_dir)
        assert proc.returncode == 0, proc.stderr
        files = _state_files(state_dir)
        wire = proxy.transcript("c2s")
        mutating = [m for m in proxy.commands if is_mutating(m)]
    assert leaks(PASSPHRASE, [wire]) and "keyid" not in mutating[0]["arguments"]
    assert not leaks(PASSPHRASE, [proc.stdout, proc.stderr, *files])
