"""Write a plugged disk into its libvirt domain's persistent definition, so the next start has it.

The disk must be attached (its live bus and slot are copied, so the definition places it
exactly where libvirt's allocation does not look). Its secrets are sealed with the domain's
hotluks key file (see :mod:`hotluks.lifecycle.libvirt_cmdline`); its files must already be
openable by the QEMU user — otherwise this refuses, naming them, rather than define a
domain that cannot start. Only libvirt's API is used (``virDomainDefineXML``), never in a hook.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hotluks.backends.base import MonitorBackend
from hotluks.errors import BackendError, RefusedError, SecretError
from hotluks.lifecycle.definition import has_disk, with_disk, without_disk
from hotluks.lifecycle.hook import access_problem, enter_problem, needed_files
from hotluks.lifecycle.libvirt_cmdline import (
    KEY_BYTES,
    KEY_OBJECT,
    commandline_argv,
    commandline_xml,
    default_qemu_user,
    ensure_key_file,
)
from hotluks.lifecycle.placement_probe import device_placement
from hotluks.model import Disk
from hotluks.plan.names import Namer
from hotluks.plan.planner import PlanContext, build_plan
from hotluks.secrets import SecretValue

#: outside the state directory, which may be closed to the QEMU user (it must enter this one)
DEFAULT_KEY_DIR = Path("/var/lib/hotluks-keys")


@dataclass(frozen=True)
class Persisted:
    domain: str
    target: str
    key_file: str | None
    #: whether the definition carries the disk now, and whether this call changed that
    in_definition: bool
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return {"domain": self.domain, "target": self.target, "key_file": self.key_file,
                "in_definition": self.in_definition, "changed": self.changed}


async def _secret_values(backend: MonitorBackend, disk: Disk,
                         given: Mapping[str, SecretValue]) -> dict[str, SecretValue]:
    values: dict[str, SecretValue] = {}
    for ref in disk.secrets:
        value = next((given[k] for k in (ref.uuid, ref.usage) if k is not None and k in given), None)
        if value is None:
            raw = await backend.secret_value(ref.key)
            if raw is None:
                raise SecretError(f"no value for {ref.describe()}: define it in libvirt or pass --secret KEY=FILE")
            value = SecretValue(raw)
        values[ref.key] = value
    return values


def _qemu_ids(user: str | None) -> tuple[int, list[int]]:
    import os
    import pwd

    if not user:
        return 0, [0]
    entry = pwd.getpwnam(user)
    return entry.pw_uid, os.getgrouplist(user, entry.pw_gid)


async def _domain_call(uri: str, domain: str, fn: Any) -> Any:
    import libvirt

    def run() -> Any:
        conn = libvirt.open(uri)
        try:
            return fn(libvirt, conn.lookupByName(domain), conn)
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(run)
    except libvirt.libvirtError as exc:
        raise BackendError(f"libvirt: {exc.get_error_message() or exc}") from None


def _problems(argv: list[str], user: str | None, key_file: Path) -> list[str]:
    """Why QEMU (as ``user``) could not open the files ``argv`` names at the next start (a key
    file not created yet: whether the QEMU user could enter its directory)."""
    uid, gids = _qemu_ids(user)
    wrapped = f"<domain>{commandline_xml(argv)}</domain>"
    problems = [f"{n.owner}: {p}" for n in needed_files(wrapped)
                if (n.owner != KEY_OBJECT or key_file.exists()) and (p := access_problem(n, uid, gids)) is not None]
    if not key_file.exists() and (p := enter_problem(key_file, uid, gids)) is not None:
        problems.append(f"{KEY_OBJECT}: {p}")
    return problems


async def check_persistable(backend: MonitorBackend, disk: Disk, *, domain: str, uri: str,
                            secrets: Mapping[str, SecretValue] | None = None, key_dir: Path = DEFAULT_KEY_DIR,
                            qemu_user: str | None = None) -> None:
    """Refuse (changing nothing: no key file, no definition) when :func:`persist` would refuse ``disk``.

    For ``attach --persistent`` before the live attach: the files do not depend on the slot."""
    values = await _secret_values(backend, disk, secrets or {})
    user = qemu_user or default_qemu_user()
    uuid = await _domain_call(uri, domain, lambda _lv, dom, _c: dom.UUIDString())
    key_file = key_dir / f"{uuid}.key"
    argv = commandline_argv(build_plan(disk, context=PlanContext()), values, bytes(KEY_BYTES), str(key_file))
    problems = _problems(argv, user, key_file)
    if problems:
        raise RefusedError(f"not writing {disk.target_dev} into {domain}'s definition: at the next start QEMU "
                           f"(as {user or 'root'}) could not open {'; '.join(problems)}; nothing was attached")


async def persist(backend: MonitorBackend, disk: Disk, *, domain: str, uri: str,
                  secrets: Mapping[str, SecretValue] | None = None, key_dir: Path = DEFAULT_KEY_DIR,
                  qemu_user: str | None = None) -> Persisted:
    """Put the attached ``disk`` into ``domain``'s definition (replacing an earlier entry for its target)."""
    names = Namer(disk.target_dev, disk.alias)
    where = await device_placement(backend, names.device_id)
    plan = build_plan(disk, context=PlanContext(pci_bus=where.bus, pci_slot=where.slot or None))
    values = await _secret_values(backend, disk, secrets or {})
    user = qemu_user or default_qemu_user()
    uuid, inactive = await _domain_call(
        uri, domain, lambda lv, dom, _c: (dom.UUIDString(), dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)))
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
    key_file = key_dir / f"{uuid}.key"
    key = ensure_key_file(key_file, user)
    argv = commandline_argv(plan, values, key, str(key_file))
    problems = _problems(argv, user, key_file)
    if problems:
        raise RefusedError(f"not writing {disk.target_dev} into {domain}'s definition: at the next start QEMU "
                           f"(as {user or 'root'}) could not open {'; '.join(problems)}")
    new = with_disk(inactive, (names.base, names.device_id), argv)
    await _domain_call(uri, domain, lambda _lv, _dom, conn: conn.defineXML(new))
    return Persisted(domain, disk.target_dev, str(key_file), True, True)


async def unpersist(target: str, *, domain: str, uri: str, alias: str | None = None) -> Persisted:
    """Remove ``target``'s arguments from ``domain``'s definition (the key file stays for other disks)."""
    names = Namer(target, alias)
    prefix = (names.base, names.device_id)
    inactive = await _domain_call(uri, domain, lambda lv, dom, _c: dom.XMLDesc(lv.VIR_DOMAIN_XML_INACTIVE)
                                  if dom.isPersistent() else None)
    if inactive is None or not has_disk(inactive, prefix):  # a transient domain: never define it
        return Persisted(domain, target, None, False, False)
    new = without_disk(inactive, prefix)
    await _domain_call(uri, domain, lambda _lv, _dom, conn: conn.defineXML(new))
    return Persisted(domain, target, None, False, True)
