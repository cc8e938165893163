"""``attach --persistent`` on the QMP path: the disk also goes into the domain's definition.

What ``hotluks persist`` does (:mod:`hotluks.lifecycle.persist`), around a live attach: the
check that QEMU could open the disk's files at the next start runs *before* the live attach
(a refusal changes nothing); the definition is written after it, and a failure there rolls
the live attach back (the operator's rollback: exit 1, or 3). ``detach`` takes a disk out
of the definition again (:func:`forget`), like ``persist --remove``.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hotluks.backends.base import MonitorBackend
from hotluks.errors import HotluksError, RefusedError
from hotluks.lifecycle.guard import LIBVIRT_BACKENDS
from hotluks.lifecycle.persist import DEFAULT_KEY_DIR, Persisted, check_persistable, persist, unpersist
from hotluks.log import get_logger
from hotluks.model import Disk
from hotluks.secrets import SecretValue

log = get_logger(__name__)


@dataclass(frozen=True)
class Keep:
    """Where the disk's definition entry goes: ``domain`` on ``uri``, key file under ``key_dir``."""

    domain: str
    uri: str
    key_dir: Path = DEFAULT_KEY_DIR
    qemu_user: str | None = None

    async def check(self, backend: MonitorBackend, disk: Disk, secrets: Mapping[str, SecretValue]) -> None:
        await check_persistable(backend, disk, domain=self.domain, uri=self.uri, secrets=secrets,
                                key_dir=self.key_dir, qemu_user=self.qemu_user)

    async def write(self, backend: MonitorBackend, disk: Disk, secrets: Mapping[str, SecretValue]) -> Persisted:
        """Write the definition; on cancellation, wait for libvirt and take a finished write out again."""
        task = asyncio.ensure_future(persist(backend, disk, domain=self.domain, uri=self.uri, secrets=secrets,
                                             key_dir=self.key_dir, qemu_user=self.qemu_user))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait([task], timeout=30)
            if task.done() and not task.cancelled() and task.exception() is None:
                await unpersist(disk.target_dev, domain=self.domain, uri=self.uri, alias=disk.alias)
            raise


def has_libvirt_python() -> bool:
    return importlib.util.find_spec("libvirt") is not None


def keep_for(backend: MonitorBackend, key_dir: Path | None, qemu_user: str | None) -> Keep:
    """The :class:`Keep` of ``backend``'s domain, or a refusal (a bare QEMU has no definition)."""
    if backend.name not in LIBVIRT_BACKENDS:
        raise RefusedError(f"--persistent needs a libvirt domain: the {backend.name} backend has no definition "
                           "(for a QEMU you start yourself see `hotluks cold-cmdline`)")
    if not has_libvirt_python():
        raise RefusedError("--persistent on the QMP path writes the definition through libvirt-python, "
                           "which is not installed")
    domain = getattr(backend, "domain_name", None) or backend.vm
    return Keep(domain, str(getattr(backend, "uri", "qemu:///system")), key_dir or DEFAULT_KEY_DIR, qemu_user)


async def forget(backend: MonitorBackend, target: str, device: str, *, required: bool) -> bool:
    """Take ``target`` out of the domain's definition when it is there; whether it was.

    Skipped (False) on a bare QEMU, and without libvirt-python unless ``required``."""
    if backend.name not in LIBVIRT_BACKENDS or (not required and not has_libvirt_python()):
        if required:
            keep_for(backend, None, None)  # raises the reason
        return False
    keep = keep_for(backend, None, None)
    alias = device if device and device != f"hl-{target}" else None
    try:
        result = await unpersist(target, domain=keep.domain, uri=keep.uri, alias=alias)
    except HotluksError as exc:
        if required:
            raise
        log.warning("could not check the definition of %s for %s: %s (`hotluks persist %s --target %s --remove` "
                    "takes it out)", keep.domain, target, exc, keep.domain, target)
        return False
    return result.changed
