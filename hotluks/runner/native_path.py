"""The libvirt-native path: a disk libvirt expresses itself, plugged through libvirt's device API.

libvirt then owns the disk's lifecycle (``domblklist``, save/restore, managedsave,
snapshots, migration, and with ``persistent`` the next start). hotluks plans and
preflights it as usual, journals it as one ``libvirt-disk`` step named by the disk's
libvirt alias (``ua-hl-TARGET`` unless the XML gives one), and undoes it — in a
rollback, ``detach`` or ``repair`` — with libvirt's detach, never the monitor. Only
the ``libvirt`` and ``virsh`` backends can take this path, and only when every
secret of the disk is a libvirt secret (libvirt resolves them itself; a ``--secret``
file never reaches it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal

from hotluks.backends.base import MonitorBackend
from hotluks.errors import BackendError, DetachTimeoutError, InputError, RefusedError
from hotluks.model import Disk
from hotluks.runner.journal import JournalStep, Record
from hotluks.secrets import SecretValue, value_for

PathChoice = Literal["qmp", "libvirt-native", "auto"]
PATH_CHOICES = ("qmp", "libvirt-native", "auto")


def why_not_native(backend: MonitorBackend, disk: Disk, given: Mapping[str, SecretValue]) -> str | None:
    """Why ``disk`` cannot take the libvirt-native path on ``backend``, or None when it can."""
    from hotluks.lifecycle.native_xml import libvirt_expressible

    if backend.name not in ("libvirt", "virsh"):
        return f"the {backend.name} backend has no libvirt device API (a libvirt domain is needed)"
    if not libvirt_expressible(disk):
        return f"libvirt cannot express a {disk.shape} disk"
    user_given = [ref.describe() for ref in disk.secrets if value_for(given, ref) is not None]
    if user_given:
        return f"{', '.join(user_given)} came from --secret, not from libvirt's secrets"
    return None


def choose_path(backend: MonitorBackend, disk: Disk, given: Mapping[str, SecretValue],
                path: PathChoice) -> tuple[bool, str]:
    """Whether ``disk`` takes the libvirt-native path, and why (for ``-v``); ``auto`` (the default)
    picks it where libvirt expresses the disk and holds all its secrets, else the QMP path."""
    if path not in PATH_CHOICES:
        raise InputError(f"path must be one of {', '.join(PATH_CHOICES)}, not {path!r}")
    if path == "qmp":
        return False, "--path qmp"
    reason = why_not_native(backend, disk, given)
    if path == "libvirt-native" and reason is not None:
        raise RefusedError(f"target {disk.target_dev} cannot take the libvirt-native path: {reason}")
    if reason is not None:
        return False, f"--path auto: {reason}"
    if path == "libvirt-native":
        return True, "--path libvirt-native"
    return True, f"--path auto: libvirt expresses a {disk.shape} disk and holds its secrets"


def native_disk(disk: Disk) -> Disk:
    """``disk`` with a libvirt user alias (``ua-…``) that names it in the journal and in QEMU."""
    return disk if disk.alias else dataclasses.replace(disk, alias=f"ua-hl-{disk.target_dev}")


def native_record(vm: str, disk: Disk, xml: str, *, persistent: bool, vm_key: str, instance: str,
                  fingerprint: str, header_fingerprint: str) -> Record:
    """The journal record of a libvirt-native attach (the XML holds secret references, never values)."""
    assert disk.alias is not None
    step = JournalStep("libvirt-disk", "disk", disk.alias, "attach-device",
                       {"id": disk.alias, "target": disk.target_dev, "persistent": persistent, "xml": xml})
    return Record(vm=vm, target=disk.target_dev, device=disk.alias, shape=disk.shape, status="attaching",
                  steps=[step], vm_key=vm_key, instance=instance, fingerprint=fingerprint,
                  header_fingerprint=header_fingerprint, path="libvirt-native")


def _domain(backend: MonitorBackend) -> tuple[str, str]:
    from hotluks.backends.libvirt import LibvirtBackend

    if not isinstance(backend, LibvirtBackend):
        raise BackendError(f"a libvirt-native disk of {backend.vm} needs the libvirt backend")
    return backend.domain_name or backend.vm, backend.uri


async def attach_through_libvirt(backend: MonitorBackend, step: JournalStep, timeout: float) -> Any:
    """Send the recorded ``libvirt-disk`` step (virDomainAttachDeviceFlags, or ``virsh attach-device``)."""
    from hotluks.lifecycle.native import attach_native_xml

    args = step.arguments
    if backend.name == "virsh":
        from hotluks.runner.native_virsh import virsh_attach

        return await virsh_attach(backend, str(args["xml"]), str(args["target"]), bool(args["persistent"]))
    domain, uri = _domain(backend)
    return await attach_native_xml(str(args["xml"]), str(args["target"]), domain=domain, uri=uri,
                                   persistent=bool(args["persistent"]), timeout=timeout)


async def detach_through_libvirt(backend: MonitorBackend, arguments: Mapping[str, Any], timeout: float) -> None:
    """The undo of a ``libvirt-disk`` step: libvirt's detach of that target (live, and the definition)."""
    from hotluks.lifecycle.native import detach_native
    from hotluks.runner.transaction import UnplugPendingError

    try:
        if backend.name == "virsh":
            from hotluks.runner.native_virsh import virsh_detach

            await virsh_detach(backend, str(arguments["target"]), str(arguments["id"]),
                               bool(arguments["persistent"]), timeout)
            return
        domain, uri = _domain(backend)
        await detach_native(str(arguments["target"]), domain=domain, uri=uri,
                            persistent=bool(arguments["persistent"]), timeout=timeout)
    except DetachTimeoutError as exc:
        raise UnplugPendingError(str(exc)) from None
    except InputError:  # libvirt no longer has it: nothing to undo
        return
