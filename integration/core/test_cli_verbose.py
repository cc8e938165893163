"""`-v` after the subcommand says which backend was chosen and whether the secret was sealed (real QEMU)."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest

from hotluks.demo.qemu.launcher import start_qemu

pytestmark = [pytest.mark.qemu, pytest.mark.cryptsetup]
KEY = "0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f"


def test_verbose_names_backend_and_sealing(images: Any, tmp_path: Any) -> None:
    vol = images.raw("volume.luks", 8)
    images.luks1(vol)
    xml = images.rewrite("attached-luks-raw", {"/var/lib/hotluks/volume.luks": str(vol)})
    master = tmp_path / "master.key"
    master.write_bytes(os.urandom(32))
    with start_qemu(["-object", f"secret,id=masterKey0,format=raw,file={master}"], machine="pc") as proc:
        for extra, sealed in (([], "not sealed"), (["--master-key", str(master)], "sealed (AES-256-CBC")):
            out = subprocess.run(
                [sys.executable, "-m", "hotluks", "attach", f"unix:{proc.qmp_path}", str(xml), "--dry-run",
                 "--state-dir", str(tmp_path / "state"), "--secret", f"{KEY}={images.passfile}", *extra, "-v"],
                capture_output=True, timeout=120)
            err = out.stderr.decode()
            assert out.returncode == 0, err
            assert "backend: qmp for unix:" in err and f"secrets: {sealed}" in err, err
            assert images.passphrase.strip() not in out.stdout + out.stderr
