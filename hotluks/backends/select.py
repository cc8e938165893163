"""Pick and connect the backend for a VM name: QMP socket, libvirt-python, or virsh."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hotluks.arguments import check_vm
from hotluks.backends.base import MasterKey, MonitorBackend
from hotluks.errors import DomainNotFound, InputError
from hotluks.log import get_logger

BACKENDS = ("qmp", "libvirt", "virsh")
log = get_logger(__name__)

def libvirt_python_available() -> bool:
    """True when ``import libvirt`` would work (checked without importing it)."""
    return importlib.util.find_spec("libvirt") is not None and importlib.util.find_spec("libvirt_qemu") is not None


def choose_backend(vm: str, backend: str | None, *, have_libvirt: bool) -> str:
    """The backend name for ``vm``: explicit choice, QMP socket, else libvirt or virsh."""
    from hotluks.backends.qmp import socket_path

    check_vm(vm)
    if backend is not None:
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        return backend
    if socket_path(vm) is not None:
        return "qmp"
    if "/" in vm:
        raise DomainNotFound(f"{vm} is neither a QMP socket nor a libvirt domain name")
    return "libvirt" if have_libvirt else "virsh"


async def open_backend(vm: str, *, uri: str | None = None, backend: str | None = None,
                       master_key: MasterKey | None = None, timeout: float = 10.0) -> MonitorBackend:
    """A connected backend for ``vm`` (``unix:/path``, a socket path, or a libvirt domain name).

    An unknown domain or socket raises :class:`DomainNotFound`, a stopped one :class:`NotRunning`
    (both name the VM; both are :class:`InputError`, exit 2).
    """
    from hotluks.backends.libvirt import DEFAULT_URI

    kind = choose_backend(vm, backend, have_libvirt=libvirt_python_available())
    uri = uri or DEFAULT_URI
    log.info("backend: %s for %s (%s)", kind, vm, "chosen with --backend" if backend else
             "a QMP socket" if kind == "qmp" else f"libvirt domain at {uri}")
    if kind == "qmp":
        from hotluks.backends.qmp import QMPBackend, socket_path

        path = socket_path(vm) or Path(vm)
        if socket_path(str(path)) is None:
            raise DomainNotFound(f"{path} is not a QMP socket")
        return await QMPBackend(path, master_key=master_key, timeout=timeout).connect()
    if kind == "libvirt":
        from hotluks.backends.libvirt import LibvirtBackend

        return await LibvirtBackend(vm, uri, master_key=master_key, timeout=timeout).connect()
    from hotluks.backends.virsh import VirshBackend

    return await VirshBackend(vm, uri, master_key=master_key, timeout=timeout).connect()
