"""``hotluks rotate``: change the passphrase of an attached disk's detached header, all or nothing.

QEMU holds the volume key in memory once the luks node is open, so the guest keeps
reading while the header file is rewritten. The live ``x-blockdev-amend`` path is not
used (QEMU 10.0.2 aborts on it). Steps, each a point where a failure is undone:

1. ``backup``        the header is saved (0600) under ``STATE/backups``;
2. ``add-key``       a copy of the header beside it gets a keyslot for the new passphrase
                     (same KDF and cost as the keyslot the old passphrase opens);
3. ``verify-new``    the copy opens with the new passphrase;
4. ``remove-old``    the old keyslot is removed from the copy; the copy no longer opens
                     with the old passphrase and keeps the header's fingerprint;
5. ``commit``        the copy atomically replaces the header file (mode and owner kept);
6. ``verify-committed`` the header file, read back, opens with the new passphrase only;
7. ``update-secret`` when the old passphrase came from libvirt, its secret gets the new value.

A failure before ``commit`` leaves the header untouched; at or after it, the header is
restored from the backup, so it opens with the old passphrase and the libvirt secret
keeps its old value. Only file-hosted detached headers are rotated.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hotluks.errors import (
    HotluksError,
    IncompleteError,
    InputError,
    RefusedError,
    RolledBackError,
    SecretError,
    WrongPassphraseError,
)
from hotluks.model import Disk
from hotluks.secrets import SecretValue

if TYPE_CHECKING:
    from hotluks.runner.operator import Operator

STEPS = ("backup", "add-key", "verify-new", "remove-old", "commit", "verify-committed", "update-secret")
Fault = Callable[[str], None]


@dataclass(frozen=True)
class RotateResult:
    """What a rotation did (no secrets)."""

    target: str
    header: str
    backup: str
    removed_keyslot: int
    added_keyslot: int
    fingerprint: str
    libvirt_secret_updated: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, "target": self.target, "header": self.header, "backup": self.backup,
                "removed_keyslot": self.removed_keyslot, "added_keyslot": self.added_keyslot,
                "header_fingerprint": self.fingerprint, "libvirt_secret_updated": self.libvirt_secret_updated,
                "seconds": round(self.seconds, 3)}


def header_file(disk: Disk) -> Path:
    """The detached header file of ``disk`` (InputError for anything else)."""
    enc = disk.encryption
    if enc is None or enc.header is None:
        raise InputError(f"target {disk.target_dev} has no detached <header>: rotate changes a detached header file")
    src = enc.header.source
    if src.kind != "file" or src.path is None:
        raise InputError(f"the header of {disk.target_dev} is on {src.describe()}; rotate rewrites header files only")
    return Path(src.path)


def _kdf_like(header: Any, keyslot: int) -> Any:
    """KDF parameters for the new keyslot: the type and cost of the one being replaced, a fresh salt."""
    from hotluks.luks import make_kdf

    old = next(k.kdf for k in header.keyslots if k.index == keyslot)
    if old.type == "pbkdf2":
        return make_kdf("pbkdf2", hash_name=old.hash, iterations=old.iterations)
    return make_kdf(old.type, iterations=old.time, memory_kib=old.memory, parallel=old.cpus)


@dataclass
class _Files:
    header: Path
    backup: Path
    work: Path


def _prepare(files: _Files, old: bytes, new: bytes, fault: Fault | None) -> tuple[int, int, str]:
    """Steps 1–4 on a copy; returns (removed slot, added slot, fingerprint). The header is not touched."""
    from hotluks import luks
    from hotluks.luks.backup import header_backup
    from hotluks.luks.fingerprint import fingerprint

    def step(name: str) -> None:
        if fault is not None:
            fault(name)

    step("backup")
    before = luks.open_header(files.header)
    old_slot = luks.unlock(before, old).keyslot
    header_backup(files.header, files.backup)
    step("add-key")
    shutil.copyfile(files.header, files.work)
    os.chmod(files.work, 0o600)
    added = luks.add_key(files.work, old, new, kdf=_kdf_like(before, old_slot))
    step("verify-new")
    if luks.unlock(files.work, new).keyslot != added:
        raise HotluksError("the new keyslot does not open with the new passphrase")
    step("remove-old")
    luks.remove_key(files.work, old)
    after = luks.open_header(files.work)
    try:
        luks.unlock(after, old)
    except WrongPassphraseError:
        pass
    else:
        raise HotluksError("the old passphrase still opens the rotated header (it is in more than one keyslot)")
    luks.unlock(after, new)
    value = fingerprint(after).value
    if value != fingerprint(before).value:
        raise HotluksError("the rotated header lost its identity (fingerprint changed)")
    return old_slot, added, value


def _commit(files: _Files) -> None:
    """Atomically put the rotated copy in place of the header, keeping its mode and owner."""
    st = os.stat(files.header)
    os.chmod(files.work, stat.S_IMODE(st.st_mode))
    if os.geteuid() == 0:
        os.chown(files.work, st.st_uid, st.st_gid)
    with open(files.work, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(files.work, files.header)
    fd = os.open(files.header.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _restore_verified(path: Path, backup: Path, old: bytes) -> None:
    """Put the backup back and check that the old passphrase opens the header again."""
    from hotluks import luks
    from hotluks.luks.backup import header_restore

    header_restore(path, backup, force=True)
    luks.unlock(path, old)


def _verify_committed(path: Path, old: bytes, new: bytes, value: str) -> None:
    """Read the header file back: the new passphrase opens it, the old one does not, same identity."""
    from hotluks import luks
    from hotluks.luks.fingerprint import fingerprint

    header = luks.open_header(path)
    luks.unlock(header, new)
    try:
        luks.unlock(header, old)
    except WrongPassphraseError:
        pass
    else:
        raise HotluksError(f"{path} still opens with the old passphrase after the rotation")
    if fingerprint(header).value != value:
        raise HotluksError(f"{path} changed identity during the rotation (replaced meanwhile?)")


async def rotate(operator: Operator, disk: Disk, new_passphrase: bytes, secrets: Mapping[str, SecretValue], *,
                 fault: Fault | None = None, disk_fingerprint: str | None = None) -> RotateResult:
    """Rotate the passphrase of ``disk`` (attached by hotluks to the operator's VM), under the VM's
    lock as the operator takes it (:meth:`Operator.attached`).

    The old passphrase is taken from ``secrets`` (by the secret's uuid or usage), else from
    the backend's secret store (libvirt), which then gets the new one. ``fault`` (for tests)
    is called with each step name of :data:`STEPS` before that step runs. ``disk_fingerprint``
    (:meth:`Operator.disk_fingerprint`) identifies the disk when its header node reads a passed
    descriptor (``/dev/fdset/N``) rather than the path.
    """
    started = time.perf_counter()
    path = header_file(disk)
    assert disk.encryption is not None
    ref = disk.encryption.secrets[0]
    backend, state_dir = operator.backend, operator.state_dir
    async with operator.attached(disk.target_dev) as (journal, record):
        same_file = any(s.role == "header-protocol" and s.arguments.get("filename") == str(path)
                        for s in record.steps)
        if not same_file and (disk_fingerprint is None or record.fingerprint != disk_fingerprint):
            raise RefusedError(f"target {disk.target_dev} was attached with another header than {path}")
        given = next((secrets[k] for k in (ref.uuid, ref.usage) if k is not None and k in secrets), None)
        from_libvirt = given is None
        old = given.value if given is not None else await backend.secret_value(ref.key)
        if old is None:
            raise SecretError(f"no value for {ref.describe()}: pass --secret {ref.key}=FILE")
        if old == new_passphrase:
            raise InputError("the new passphrase is the current one")
        if not new_passphrase:
            raise InputError("empty new passphrase")
        backups = state_dir / "backups"
        backups.mkdir(mode=0o700, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        real = Path(os.path.realpath(path))  # replace the file a symlink points to, not the link
        files = _Files(real, backups / f"{journal.dir.name}-{disk.target_dev}-{stamp}-{os.getpid()}.luksheader",
                       real.with_name(f".{real.name}.rotate{os.getpid()}"))
        committed = False
        try:
            removed, added, value = await asyncio.to_thread(_prepare, files, old, new_passphrase, fault)
            if fault is not None:
                fault("commit")
            await asyncio.to_thread(_commit, files)
            committed = True
            if fault is not None:
                fault("verify-committed")
            await asyncio.to_thread(_verify_committed, real, old, new_passphrase, value)
            if from_libvirt:
                if fault is not None:
                    fault("update-secret")
                await update_libvirt_secret(backend, ref.key, new_passphrase)
        except BaseException as exc:
            files.work.unlink(missing_ok=True)
            if not committed:
                if isinstance(exc, HotluksError | OSError | RuntimeError):
                    raise RolledBackError(f"rotation of {disk.target_dev} failed before the header was changed: "
                                          f"{exc}; {path} is unchanged") from None
                raise
            try:
                await asyncio.to_thread(_restore_verified, real, files.backup, old)
            except Exception as restore_exc:
                raise IncompleteError(f"rotation of {disk.target_dev} failed ({exc}) and restoring {path} from "
                                      f"{files.backup} failed too: {restore_exc}; restore it with `hotluks luks "
                                      "header-restore`") from None
            raise RolledBackError(f"rotation of {disk.target_dev} failed: {exc}; {path} was restored from "
                                  f"{files.backup} and opens with the old passphrase") from None
    return RotateResult(disk.target_dev, str(path), str(files.backup), removed, added, value, from_libvirt,
                        time.perf_counter() - started)


async def update_libvirt_secret(backend: Any, ref: str, value: bytes) -> None:
    """Give the libvirt secret ``ref`` (uuid or usage) a new value, through libvirt-python or virsh."""
    if backend.name == "libvirt":
        await asyncio.to_thread(_set_with_libvirt, backend.uri, ref, value)
    elif backend.name == "virsh":
        import re

        uuid = ref if re.fullmatch(r"[0-9a-fA-F-]{32,36}", ref) else await backend._secret_uuid_by_usage(ref)
        if uuid is None:
            raise SecretError(f"libvirt has no secret {ref!r} to update")
        await asyncio.to_thread(_set_with_virsh, backend.uri, uuid, value)
    else:
        raise SecretError(f"the passphrase came from the {backend.name} backend, which cannot update secrets")


def _set_with_libvirt(uri: str, ref: str, value: bytes) -> None:
    import libvirt

    conn = libvirt.open(uri)
    try:
        try:
            secret = conn.secretLookupByUUIDString(ref)
        except libvirt.libvirtError:
            secret = conn.secretLookupByUsage(libvirt.VIR_SECRET_USAGE_TYPE_VOLUME, ref)
        secret.setValue(value)
    except libvirt.libvirtError as exc:
        raise SecretError(f"cannot update libvirt secret {ref!r}: {exc.get_error_message()}") from None
    finally:
        conn.close()


def _set_with_virsh(uri: str, ref: str, value: bytes) -> None:
    import subprocess

    from hotluks.memfile import memory_file

    with memory_file(value) as (path, fd):  # never on a disk, also if hotluks is killed meanwhile
        proc = subprocess.run(["virsh", "-q", "-c", uri, "secret-set-value", "--secret", ref, "--file", path,
                               "--plain"], capture_output=True, text=True, timeout=60, pass_fds=(fd,))
    if proc.returncode != 0:
        raise SecretError(f"cannot update libvirt secret {ref!r}: {proc.stderr.strip()[-300:]}")
