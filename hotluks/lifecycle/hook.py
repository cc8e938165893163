"""The libvirt ``qemu`` hook: refuse a start, restore or incoming migration QEMU could not complete.

libvirt runs every executable in ``/etc/libvirt/hooks/qemu.d/`` as root, with the
domain XML on stdin and ``NAME OPERATION SUB-OPERATION EXTRA`` as arguments, at
``prepare``/``start``/``started``/``stopped``/``release``/``migrate``/``restore``/
``reconnect``/``attach``. A non-zero exit at ``prepare``, ``migrate`` or ``restore``
aborts that operation before QEMU starts (an incoming migration is cancelled and
the source keeps running); for ``migrate``/``restore`` the hook's stdout replaces the
XML (empty: unchanged). A hook must not call libvirt (the daemon waits for it).

hotluks' hook checks the disks a definition carries in ``<qemu:commandline>``
(``hotluks cold-cmdline --format libvirt``): every file they name (the key file,
payload and header) must exist and be openable by the QEMU user, which libvirt does
not arrange for paths it does not know. Otherwise the operation is refused up front
with a message naming the disk and the file, instead of QEMU failing halfway.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hotluks.permissions import Credentials, permits

QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
#: operations whose failure stops QEMU from starting (and, for migrate, keeps the source running)
CHECKED_OPERATIONS = ("prepare", "migrate", "restore")
HOTLUKS_IDS = ("hl-", "hotluks-")


@dataclass(frozen=True)
class NeededFile:
    """A file a hotluks object or node in ``<qemu:commandline>`` makes QEMU open."""

    owner: str  # object id or node name
    path: str
    write: bool


def needed_files(domain_xml: str | bytes) -> list[NeededFile]:
    """Files named by hotluks' ``-object``/``-blockdev`` arguments in a domain XML. Pure."""
    from lxml import etree

    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    root = etree.fromstring(domain_xml.encode() if isinstance(domain_xml, str) else domain_xml, parser)
    args = [str(a.get("value", "")) for a in root.iterfind(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}arg")]
    needed: list[NeededFile] = []
    for option, value in zip(args, args[1:], strict=False):
        if option not in ("-object", "-blockdev") or not value.startswith("{"):
            continue
        try:
            props: dict[str, Any] = json.loads(value)
        except ValueError:
            continue
        owner = str(props.get("id") or props.get("node-name") or "")
        if not owner.startswith(HOTLUKS_IDS):
            continue
        if option == "-object" and isinstance(props.get("file"), str):
            needed.append(NeededFile(owner, props["file"], write=False))
        elif props.get("driver") in ("file", "host_device") and isinstance(props.get("filename"), str):
            needed.append(NeededFile(owner, props["filename"], write=not props.get("read-only", False)))
    return needed


def _allowed(st: os.stat_result, uid: int, gids: Iterable[int], want: int) -> bool:
    return permits(st, Credentials(uid, frozenset(gids)), want)


def enter_problem(path: str | os.PathLike[str], uid: int, gids: Sequence[int]) -> str | None:
    """For a file still to be created (directories made mode 0711): why the QEMU user could not
    reach it through the directories that exist already, or None."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and parent != "/":
        if os.path.isdir(parent) and not _allowed(os.stat(parent), uid, gids, 1):
            return f"{os.fspath(path)}: the QEMU user cannot enter {parent}"
        parent = os.path.dirname(parent)
    return None


def access_problem(need: NeededFile, uid: int, gids: Sequence[int]) -> str | None:
    """Why the QEMU user cannot open ``need`` (missing, a directory on the way, the file), or None."""
    path = os.path.abspath(need.path)
    if path.startswith("/dev/"):
        return f"{path} is under /dev, which libvirt replaces with a private /dev for QEMU"
    try:
        st = os.stat(path)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    if stat.S_ISDIR(st.st_mode):
        return f"{path} is a directory"
    parent = os.path.dirname(path)
    while parent and parent != "/":
        if not _allowed(os.stat(parent), uid, gids, 1):
            return f"{path}: the QEMU user cannot enter {parent}"
        parent = os.path.dirname(parent)
    want = 6 if need.write else 4
    if not _allowed(st, uid, gids, want):
        return f"{path} is not {'readable and writable' if need.write else 'readable'} by the QEMU user"
    return None


def refusal(name: str, operation: str, domain_xml: str | bytes, uid: int, gids: Sequence[int]) -> str | None:
    """The message refusing ``operation`` of domain ``name``, or None when QEMU can open everything."""
    if operation not in CHECKED_OPERATIONS:
        return None
    problems = [f"{need.owner}: {problem}" for need in needed_files(domain_xml)
                if (problem := access_problem(need, uid, gids)) is not None]
    if not problems:
        return None
    what = {"prepare": "start", "migrate": "incoming migration", "restore": "restore"}[operation]
    return (f"hotluks: refusing the {what} of domain {name}: QEMU could not open the files of its hotluks "
            f"disks ({'; '.join(problems)}); fix the files (see `hotluks cold-cmdline --format libvirt`)")
