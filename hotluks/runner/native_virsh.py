"""The libvirt-native path under the virsh backend: ``virsh attach-device`` / ``detach-device-alias``.

The disk XML holds secret references only (never values); it goes to virsh as a private
temporary file. The result is checked in the live XML, as with libvirt-python.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from typing import Any

from hotluks.backends.base import MonitorBackend
from hotluks.backends.virsh_shell import command_outputs, shell_quote
from hotluks.errors import BackendError, DetachTimeoutError, InputError


def _virsh(backend: MonitorBackend) -> Any:
    from hotluks.backends.virsh import VirshBackend

    if not isinstance(backend, VirshBackend):
        raise BackendError(f"{backend.vm}: not the virsh backend")
    return backend


async def _live_xml(backend: Any) -> str:
    status, out, err = await backend.run_command(f"dumpxml --domain {shell_quote(backend.vm)}")
    if status != 0 or err.strip():
        raise BackendError(f"virsh dumpxml {backend.vm}: {err.strip() or status}")
    return "".join(command_outputs(out)).strip()


async def virsh_attach(backend: MonitorBackend, xml: str, target: str, persistent: bool) -> Any:
    """Attach ``xml`` live (and to the definition when ``persistent``); the NativeAttachment from the live XML."""
    from hotluks.lifecycle.native import _attachment, live_disk

    vb = _virsh(backend)
    if live_disk(await _live_xml(vb), target) is not None:
        raise InputError(f"domain {vb.vm} already has a disk {target}")
    with tempfile.TemporaryDirectory(prefix="hotluks-disk-") as where:
        path = os.path.join(where, "disk.xml")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(xml)
        flags = " --live --config" if persistent else " --live"
        status, _, err = await vb.run_command(
            f"attach-device --domain {shell_quote(vb.vm)} --file {shell_quote(path)}{flags}")
    if status != 0 or err.strip():
        raise BackendError(f"virsh attach-device {target}: {err.strip() or status}")
    el = live_disk(await _live_xml(vb), target)
    if el is None:
        raise BackendError(f"virsh accepted disk {target} but it is not in {vb.vm}'s live XML")
    return _attachment(vb.vm, target, el, persistent)


async def virsh_detach(backend: MonitorBackend, target: str, alias: str, persistent: bool, timeout: float) -> None:
    """Unplug the disk by its alias and wait (bounded) until ``target`` has left the live XML."""
    from hotluks.lifecycle.native import live_disk

    vb = _virsh(backend)
    if live_disk(await _live_xml(vb), target) is None:
        raise InputError(f"domain {vb.vm} has no disk {target}")
    flags = " --live --config" if persistent else " --live"
    status, _, err = await vb.run_command(
        f"detach-device-alias --domain {shell_quote(vb.vm)} --alias {shell_quote(alias)}{flags}")
    if status != 0 or err.strip():
        raise BackendError(f"virsh detach-device-alias {alias}: {err.strip() or status}")
    deadline = time.monotonic() + timeout
    while live_disk(await _live_xml(vb), target) is not None:
        if time.monotonic() > deadline:
            raise DetachTimeoutError(f"the guest of {vb.vm} did not release {target} within {timeout:.0f}s; "
                                     "libvirt keeps the unplug request pending")
        await asyncio.sleep(0.2)
