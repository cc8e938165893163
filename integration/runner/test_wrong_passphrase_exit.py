"""The documented exit codes of a wrong passphrase (README, "A wrong passphrase: exit 2 in attach,
exit 1 in luks verify"): the same header and the same wrong key give

- ``attach``: 2 (PreflightFailed), nothing sent to the VM;
- ``attach --no-preflight``: 1 (RolledBack), QEMU refused it after the first steps, VM as before;
- ``luks verify``: 1 (WrongPassphraseError), and 2 when it cannot check at all, 0 for the right key.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.qmpproxy import MUTATING, QMPProxy
from testsupport.vms import Monitor, Snapshot, leaks, make_disk, run_cli

pytestmark = pytest.mark.qemu


def test_wrong_passphrase_exit_codes(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                     state_dir: Path) -> None:
    disk = make_disk(tmp_path, "detached-header-raw", "vdb")
    assert disk.header is not None and disk.payload is not None
    wrong = tmp_path / "wrong.pass"
    wrong.write_bytes(b"hl-not-the-passphrase")
    secret = ("--secret", f"{disk.secret_key}={wrong}")

    with QMPProxy(vm.qmp_path) as proxy:
        refused = run_cli("attach", f"unix:{proxy.path}", disk.xml_path, *secret, "--state-dir", state_dir, "--json")
        sent = proxy.executed()
    assert refused.returncode == 2, refused.stderr
    assert json.loads(refused.stdout)["error"]["type"] == "PreflightFailed"
    assert not set(sent) & MUTATING, sent  # refused before anything was done
    assert monitor.snapshot() == initial

    rolled = run_cli("attach", vm.qmp_path, disk.xml_path, *secret, "--state-dir", state_dir, "--no-preflight",
                     "--json")
    assert rolled.returncode == 1, rolled.stderr
    assert json.loads(rolled.stdout)["error"]["type"] == "RolledBack"
    assert monitor.snapshot() == initial

    verify = run_cli("luks", "verify", disk.payload, "--header", disk.header, "--key-file", wrong, "--json")
    assert verify.returncode == 1, verify.stderr
    assert json.loads(verify.stdout)["error"]["type"] == "WrongPassphraseError"
    plain = tmp_path / "plain.img"
    plain.write_bytes(bytes(1 << 20))
    assert run_cli("luks", "verify", plain, "--key-file", wrong).returncode == 2  # cannot check: not LUKS
    right = run_cli("luks", "verify", disk.payload, "--header", disk.header, "--key-file", disk.secret_file)
    assert right.returncode == 0, right.stderr
    outputs = [p.stdout + p.stderr for p in (refused, rolled, verify, right)]
    assert not leaks(disk.passphrase, outputs) and not leaks(b"hl-not-the-passphrase", outputs)
