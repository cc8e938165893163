"""What the libvirt-python and virsh backends share.

Both reach QEMU through libvirt's monitor passthrough, so they shape commands,
replies and events alike, name a domain by its UUID, read libvirt's per-domain
master key the same way and look secrets up by UUID or usage in one order.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotluks.backends.base import Event, MasterKey, QMPArgs, QMPCommandError, VMIdentity
from hotluks.backends.identity import looks_like_uuid, normalize_uuid, process_instance, qemu_pid_from_vcpus
from hotluks.backends.replies import checked
from hotluks.errors import BackendError, DomainNotFound, NotRunning

if TYPE_CHECKING:  # pragma: no cover
    from hotluks.backends.base import MonitorBackend

DEFAULT_URI = "qemu:///system"
MASTER_KEY_ID = "masterKey0"
#: libvirt secret usage types tried for a usage id, in this order (a disk passphrase first)
SECRET_USAGES = ("volume", "ceph", "iscsi", "tls", "vtpm")


def domain_key(uuid: str | None, uri: str, name: str) -> str:
    """Journals and locks of a domain: its UUID (every name, UUID spelling and URI alias alike).

    Before the UUID is known (not connected), ``libvirt-URI-NAME``.
    """
    return normalize_uuid(uuid) if uuid is not None else f"libvirt-{uri}-{name}"


def no_domain(vm: str, uri: str) -> DomainNotFound:
    return DomainNotFound(f"no libvirt domain named {vm!r} on {uri}")


def not_running(vm: str, uri: str) -> NotRunning:
    return NotRunning(f"libvirt domain {vm!r} on {uri} is not running")


def private_secret_message(ref: str) -> str:
    return (f"libvirt secret {ref!r} is private: its value cannot be read back; define it with "
            "private='no' or give hotluks the passphrase")


def secret_uuid(ref: str) -> str | None:
    """``ref`` as a canonical UUID when it is one (then it is looked up by UUID, not usage)."""
    return normalize_uuid(ref) if looks_like_uuid(ref) else None


def command_json(command: str, arguments: QMPArgs | None) -> str:
    """The QMP command as one JSON text."""
    msg: dict[str, Any] = {"execute": command}
    if arguments:
        msg["arguments"] = dict(arguments)
    return json.dumps(msg)


def parse_reply(command: str, reply: str) -> Any:
    """The ``return`` value of a QMP reply text; :class:`QMPCommandError` for an error reply."""
    try:
        data = json.loads(reply)
    except ValueError:
        raise BackendError(f"{command}: unreadable reply from the monitor") from None
    if not isinstance(data, dict):
        raise BackendError(f"{command}: unexpected reply from the monitor")
    if "error" in data:
        err = data["error"] if isinstance(data["error"], dict) else {}
        raise QMPCommandError(command, str(err.get("class", "GenericError")), str(err.get("desc", "unknown error")))
    if "return" not in data:
        raise BackendError(f"{command}: reply from the monitor has neither 'return' nor 'error'")
    return checked(command, data["return"])


def shape_event(name: str, seconds: int, micros: int, details: str | None) -> Event:
    """A libvirt QEMU-monitor event (its details are QEMU's JSON text) shaped like the QMP event."""
    data: Any = {}
    if details and details != "<null>":
        try:
            data = json.loads(details)
        except ValueError:
            data = {}
    return {"event": name, "data": data if isinstance(data, dict) else {},
            "timestamp": {"seconds": seconds, "microseconds": micros}}


def decode_master_key(raw: bytes, fmt: str) -> bytes:
    """The key bytes of a ``secret`` object's file (``raw`` or ``base64`` format)."""
    key = base64.b64decode(raw, validate=True) if fmt == "base64" else raw
    if len(key) != 32:
        raise BackendError(f"{MASTER_KEY_ID} is {len(key)} bytes, expected 32 (AES-256)")
    return key


async def probe_master_key(backend: MonitorBackend) -> MasterKey | None:
    """libvirt's per-domain AES key, read from the file QEMU's ``masterKey0`` object names.

    libvirt 11 starts every QEMU with ``-object secret,id=masterKey0,format=raw,
    file=/var/lib/libvirt/qemu/domain-<id>-<name>/master-key.aes`` (32 raw bytes,
    readable by root). Asking QEMU for the object's ``file`` ties the key to the
    running process rather than guessing the directory name.
    """
    try:
        path = await backend.execute("qom-get", {"path": f"/objects/{MASTER_KEY_ID}", "property": "file"})
        fmt = await backend.execute("qom-get", {"path": f"/objects/{MASTER_KEY_ID}", "property": "format"})
    except QMPCommandError:
        return None
    if not isinstance(path, str) or not path:
        return None
    try:
        raw = await asyncio.to_thread(Path(path).read_bytes)
    except OSError as exc:
        raise BackendError(f"cannot read libvirt's master key {path}: {exc.strerror}") from None
    return MasterKey(MASTER_KEY_ID, decode_master_key(raw, str(fmt)))


async def domain_identity(backend: MonitorBackend, uuid: str, domain_id: int | None) -> VMIdentity:
    """Key = the domain's UUID; instance = its QEMU process (pid + start time).

    The process is found through QEMU's vCPU threads, which works for every URI that
    reaches a QEMU on this host. For a QEMU we cannot see (a remote URI), libvirt's
    domain id stands in: libvirt gives every start of a domain a new id.
    """
    pid = await qemu_pid_from_vcpus(backend)
    instance = process_instance(pid) if pid is not None else None
    if instance is None:
        instance = f"domid{domain_id}" if domain_id is not None and domain_id >= 0 else ""
    return VMIdentity(normalize_uuid(uuid), instance)
