"""Deterministic, collision-free names for the objects, nodes and device of a plan.

Names derive from the target device (``vdb`` → ``hl-vdb-…``), start with a letter,
fit QEMU's 31-character node-name limit and never look like libvirt's
``libvirt-N-…`` names.
"""

from __future__ import annotations

import re

from hotluks.errors import InputError

PREFIX = "hl"
MAX_NAME = 31
_VALID = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")

ROLES = {
    "key": "key",
    "auth": "auth",
    "tls": "tls",
    "header-protocol": "hdr-proto",
    "header-format": "hdr-fmt",
    "payload-protocol": "proto",
    "payload-format": "fmt",
    "payload-slice": "slice",
    "luks": "luks",
    "copy-on-read": "cor",
    "throttle-group": "tg",
    "throttle": "throttle",
}


GUARD_PREFIX = "hlg-"


def guard_node(target: str) -> str:
    """The migration guard's node name for ``target`` (never one of hotluks' ``hl-``/libvirt's names)."""
    return f"{GUARD_PREFIX}{target}"[:MAX_NAME]


def valid_name(name: str) -> bool:
    """QEMU's rule for node names and QOM ids, plus the length limit."""
    return len(name) <= MAX_NAME and bool(_VALID.match(name)) and not name.startswith("libvirt-")


class Namer:
    """Names for one target. ``name(role, i)`` is stable for the same target and role."""

    def __init__(self, target_dev: str, alias: str | None = None):
        self.base = f"{PREFIX}-{target_dev}"
        self.device_id = alias or self.base
        for probe in (self.name("header-protocol"), self.device_id):
            if not valid_name(probe):
                raise InputError(f"target '{target_dev}' gives an invalid QEMU name '{probe}'")

    def name(self, role: str, index: int | None = None) -> str:
        suffix = ROLES[role] + (str(index) if index is not None else "")
        return f"{self.base}-{suffix}"


def owned_prefix(target_dev: str) -> str:
    """Every name a plan for ``target_dev`` creates starts with this."""
    return f"{PREFIX}-{target_dev}"
