"""The generated /init: syntax (checked by busybox sh) and substitution."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hotluks.demo.guest.initscript import GUEST_MODULE_DIR, init_script
from hotluks.demo.guest.protocol import COMMANDS


def test_modules_are_loaded_in_the_given_order() -> None:
    text = init_script(["virtio_ring.ko", "virtio.ko", "crc-t10dif.ko"])
    assert "for m in virtio_ring.ko virtio.ko crc-t10dif.ko; do" in text
    assert f"insmod {GUEST_MODULE_DIR}/$m" in text
    assert "port=ttyS1" in text
    assert "@" + "MODULES@" not in text and "@PORT@" not in text


def test_every_protocol_command_has_a_handler() -> None:
    text = init_script([])
    for command in COMMANDS:
        assert f"{command}) f=c_{command.replace('-', '_')} ;;" in text


@pytest.mark.parametrize("bad", ["a b.ko", "x;reboot", "$(id)", ""])
def test_unsafe_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        init_script([bad])


@pytest.mark.skipif(not Path("/bin/busybox").exists(), reason="busybox-static not installed")
def test_busybox_sh_accepts_the_syntax(tmp_path: Path) -> None:
    script = tmp_path / "init"
    script.write_text(init_script(["virtio.ko"], agent_port="ttyS0"))
    done = subprocess.run(["/bin/busybox", "sh", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert shutil.which("sh") is not None
