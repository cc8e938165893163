"""``hotluks attach --dry-run`` prints, command for command, what a real attach then sends — seen by a
logging QMP proxy between hotluks and QEMU (secret values redacted on both sides)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import QemuProcess
from testsupport.qmpproxy import QMPProxy, is_mutating
from testsupport.vms import SHAPES, Monitor, Snapshot, make_disk, run_cli, target_for

pytestmark = pytest.mark.qemu

SECRET_FIELDS = ("data", "format", "keyid", "iv")


def _comparable(command: dict[str, Any]) -> dict[str, Any]:
    args = dict(command.get("arguments", {}))
    if command.get("execute") == "object-add":
        for key in SECRET_FIELDS:
            args.pop(key, None)
    return {"execute": command["execute"], "arguments": args}


@pytest.mark.parametrize("bus", ["virtio", "scsi"])
@pytest.mark.parametrize("shape", SHAPES)
def test_dry_run_equals_what_is_sent(vm: QemuProcess, monitor: Monitor, initial: Snapshot, tmp_path: Path,
                                     state_dir: Path, shape: str, bus: str) -> None:
    disk = make_disk(tmp_path, shape, target_for(bus, 0), bus)
    common = ["--state-dir", state_dir]
    with QMPProxy(vm.qmp_path) as proxy:
        dry = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), *common, "--dry-run", "--json")
        assert dry.returncode == 0, dry.stderr
        assert not [c for c in proxy.commands if is_mutating(c)]
        proxy.reset()
        real = run_cli("attach", proxy.path, disk.xml_path, *disk.cli_secret(), *common)
        assert real.returncode == 0, real.stderr
        sent = [_comparable(c) for c in list(proxy.commands) if is_mutating(c)]
        assert run_cli("detach", proxy.path, "--target", disk.target, *common).returncode == 0
    planned = [_comparable(c) for c in json.loads(dry.stdout)["commands"]]
    assert planned == sent
    assert disk.passphrase not in dry.stdout.encode()
    assert monitor.snapshot() == initial
