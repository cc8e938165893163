"""The virsh backend leaves no history, and no secret-bearing line, anywhere.

virsh's shell mode writes every input line to ``$XDG_CACHE_HOME/libvirt/virsh/history``
(default ``~/.cache``) when it exits. A real attach and detach through the virsh
backend, with the passphrase read from libvirt (``secret-get-value``) and sent both
sealed and as plain base64, must leave nothing of it under $HOME or the XDG dirs.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hotluks.backends.virsh import VirshBackend
from hotluks.runner.operator import Operator
from testsupport.libvirtd import TransientDomain, define_secret, give_to_qemu, qemu_accessible_dir
from testsupport.vms import make_disk

pytestmark = [pytest.mark.libvirt, pytest.mark.qemu]
Run = Callable[..., Any]
PASSPHRASE = b"hotluks-virsh-history-\xc3\xa9-canary"
LINES = (b"qemu-monitor-command", b"object-add", b"secret-get-value", b"blockdev-add", b"dominfo")


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh $HOME with the XDG defaults under it, and a virsh log file set."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("VIRSH_LOG_FILE", str(home / "virsh.log"))  # would log every command
    yield home


def files_holding(root: Path, needles: tuple[bytes, ...]) -> dict[str, list[bytes]]:
    found: dict[str, list[bytes]] = {}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            hits = [n for n in needles if n in data]
            if hits:
                found[str(path)] = hits
    return found


def test_shell_mode_virsh_writes_history_where_we_look(home: Path, libvirt_uri: str) -> None:
    """The control: plain virsh, as the backend used to run it, records its input under $HOME."""
    subprocess.run(["virsh", "-q", "-c", libvirt_uri], input=b"echo qemu-monitor-command\n",
                   capture_output=True, timeout=30, check=True)
    assert files_holding(home, LINES) == {str(home / ".cache/libvirt/virsh/history"): [b"qemu-monitor-command"]}


@pytest.fixture
def stack_dir() -> Iterator[contextlib.ExitStack]:
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.mark.parametrize("sealed", [True, False], ids=["sealed", "plain-base64"])
def test_attach_and_detach_leave_no_trace(home: Path, tmp_path: Path, domain: TransientDomain, sealed: bool,
                                          arun: Run, stack_dir: contextlib.ExitStack) -> None:
    work = Path(stack_dir.enter_context(qemu_accessible_dir()))
    disk = make_disk(work, "detached-header-raw", "vdb", passphrase=PASSPHRASE)
    for path in disk.files:  # QEMU's user must be able to open them (hotluks never opens on its behalf)
        give_to_qemu(path)
    needles = (PASSPHRASE, base64.b64encode(PASSPHRASE), *LINES)

    async def main() -> tuple[bool, str]:
        backend = await VirshBackend(domain.name, domain.uri, probe_master_key=sealed).connect()
        try:
            op = Operator(backend, state_dir=tmp_path / "state")
            result = await op.attach(disk.disk())  # the passphrase comes from libvirt: secret-get-value
            await op.detach("vdb", timeout=15)
            return backend.can_seal, result.device
        finally:
            await backend.close()

    private_caches = set(Path(tempfile.gettempdir()).glob("hotluks-virsh-*"))
    with define_secret(domain.uri, "volume", disk.secret_key, PASSPHRASE):
        can_seal, device = arun(main())
    assert can_seal is sealed and device
    assert files_holding(home, needles) == {}
    # ours are gone (another process's may come and go meanwhile)
    assert set(Path(tempfile.gettempdir()).glob("hotluks-virsh-*")) - private_caches == set()
    assert not (home / "virsh.log").exists()
