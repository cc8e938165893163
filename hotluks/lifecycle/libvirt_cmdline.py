"""A disk libvirt cannot express, as a ``<qemu:commandline>`` block of a persistent domain definition.

libvirt passes ``<qemu:commandline>`` arguments to every QEMU it starts for the
domain: on ``start``, on ``restore`` and on ``start`` after ``managedsave`` (the
saved XML holds them), on snapshot revert (the snapshot holds the XML) and on the
incoming side of a migration. So a disk defined this way is recreated with the same
device id, bus address and node names wherever the migration stream expects it.

Secrets follow libvirt's own model for ``masterKey0``: the XML carries only AES-256-CBC
ciphertext (``data``/``keyid``/``iv``); the 32-byte key sits in a file only the QEMU
user (and root) can read, referenced by a ``secret`` object that comes first. The
passphrase itself is in no file the QEMU user can read and nowhere in the XML.

Access (libvirt labels, chowns and namespaces only what it knows): the key file and the
disk's files must be openable by the QEMU user along their whole path; block devices
under ``/dev`` are not visible in QEMU's private ``/dev`` (use files, or disable
libvirt's mount namespace: ``namespaces = []`` in qemu.conf).
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from hotluks.errors import InputError, SecretError
from hotluks.model import Disk
from hotluks.plan.steps import Plan
from hotluks.secrets import SecretValue

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
KEY_OBJECT = "hotluks-key0"
KEY_BYTES = 32


def require_fixed_address(disk: Disk, placed: bool = False) -> None:
    """A PCI disk in a definition needs an explicit ``<address>`` (or ``placed``: a given bus and slot).

    Without one QEMU would take the first free slot, which libvirt (not knowing the
    device) later hands to its own hot-plug: choose a slot from the top of the range
    (pc: bus 0 slot 0x1f; q35: the last root port's bus).
    """
    if disk.bus == "virtio" and disk.address is None and not placed:
        raise InputError(f"target {disk.target_dev}: a disk in <qemu:commandline> needs an explicit "
                         "<address type='pci' …/> (e.g. bus='0' slot='0x1f' on pc) or --pci-bus/--pci-slot, so "
                         "that libvirt's own address allocation never takes its slot")


def commandline_argv(plan: Plan, values: Mapping[str, SecretValue], key: bytes, key_file: str) -> list[str]:
    """The key object (from ``key_file``), then the plan's objects/nodes/device, secrets sealed. Pure."""
    from hotluks.render.cmdline import cold_boot_args

    key_object = f'{{"qom-type":"secret","id":"{KEY_OBJECT}","format":"raw","file":{_json(key_file)}}}'
    return ["-object", key_object, *cold_boot_args(plan, {}, values, master_key=(KEY_OBJECT, key))]


def _json(text: str) -> str:
    import json

    return json.dumps(text)


def commandline_xml(argv: list[str]) -> str:
    """``<qemu:commandline>`` holding ``argv`` (paste into ``<domain xmlns:qemu=…>``). Pure."""
    from lxml import etree

    root = etree.Element(f"{{{QEMU_NS}}}commandline", nsmap={"qemu": QEMU_NS})
    for arg in argv:
        etree.SubElement(root, f"{{{QEMU_NS}}}arg", value=arg)
    return str(etree.tostring(root, pretty_print=True, encoding="unicode"))


def ensure_key_file(path: Path, qemu_user: str | None) -> bytes:
    """The 32-byte key in ``path``; created (mode 0400, owned by ``qemu_user``) when absent."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) != KEY_BYTES:
            raise SecretError(f"key file {path} must hold exactly {KEY_BYTES} bytes, not {len(key)}") from None
        return key
    except OSError as exc:
        raise SecretError(f"cannot create key file {path}: {exc.strerror}") from None
    key = os.urandom(KEY_BYTES)
    try:
        os.write(fd, key)
        if qemu_user:
            try:
                user = pwd.getpwnam(qemu_user)
            except KeyError:
                raise InputError(f"no user {qemu_user!r} to own the key file (see --qemu-user)") from None
            os.fchown(fd, user.pw_uid, user.pw_gid)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    return key


def default_qemu_user() -> str | None:
    """libvirt's QEMU user on Debian (``libvirt-qemu``) or Fedora (``qemu``), when it exists."""
    for name in ("libvirt-qemu", "qemu"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None
