"""End to end on a libvirt domain: hotluks attaches every disk shape through the libvirt and
virsh backends, takes passphrases from libvirt secrets, seals them under libvirt's masterKey0,
QEMU reads the plaintext, and detach leaves the domain as it was."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.select import open_backend
from hotluks.runner.operator import Operator
from testsupport.libvirtd import QEMU_LOG_DIR, define_secret, give_to_qemu, qemu_accessible_dir, start_domain
from testsupport.vms import PATTERN, SHAPES, backend_snapshot, make_disk, read_pattern_via_log, target_for

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]






@pytest.mark.slow
@pytest.mark.parametrize("bus", ["virtio", "scsi"])
def test_attach_detach_all_shapes_with_libvirt_secrets(libvirt_uri: str, backend_name: str, bus: str,
                                                       tmp_path: Path, arun: Run,
                                                       capfd: pytest.CaptureFixture[str]) -> None:
    # virtio-scsi takes pci.1: one spare root port per shape besides it
    with start_domain(libvirt_uri, root_ports=len(SHAPES) + 1) as domain, qemu_accessible_dir() as workdir, \
            contextlib.ExitStack() as secrets:
        disks = [make_disk(workdir / "disks", shape, target_for(bus, i), bus) for i, shape in enumerate(SHAPES)]
        for disk in disks:
            for path in disk.files:
                give_to_qemu(path)
            disk.secret_file.unlink()  # the passphrase comes from libvirt only
            secrets.enter_context(define_secret(domain.uri, "volume", disk.secret_key, disk.passphrase))

        async def main() -> None:
            async with await open_backend(domain.name, uri=domain.uri, backend=backend_name) as backend:
                assert backend.master_key is not None
                before = await backend_snapshot(backend)
                log = QEMU_LOG_DIR / f"{domain.name}.log"
                op = Operator(backend, state_dir=tmp_path / "state")
                for disk in disks:
                    result = await op.attach(disk.disk(), {}, path="qmp")
                    secret_ids = [s.name for s in result.steps if s.execute == "object-add"]
                    assert secret_ids
                    for obj in secret_ids:  # sealed: QEMU decrypted it with masterKey0
                        assert await backend.execute("qom-get", {"path": f"/objects/{obj}",
                                                                 "property": "keyid"}) == "masterKey0"
                    assert await read_pattern_via_log(backend, log, result.top_node, PATTERN) == "ok", disk.shape
                    assert await read_pattern_via_log(backend, log, result.top_node, 0xCD) == "mismatch"
                for disk in disks:
                    await op.detach(disk.target, timeout=20)
                assert await backend_snapshot(backend) == before

        arun(main(), timeout=240)
    out, err = capfd.readouterr()
    assert disks[0].passphrase.decode() not in out + err
