"""What the QEMU behind a VM can do, derived (purely) from ``query-qmp-schema``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

ALL_RBD_FORMATS = frozenset({"luks", "luks2", "luks-any"})


@dataclass(frozen=True)
class Capabilities:
    """Feature flags the planner checks. The defaults describe a modern QEMU (≥ 9.0)."""

    qemu_version: tuple[int, int, int] | None = None
    luks_detached_header: bool = True
    block_drivers: frozenset[str] | None = None
    rbd_encrypt_formats: frozenset[str] = field(default=ALL_RBD_FORMATS)
    rbd_encrypt_parent: bool = True

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.qemu_version)) if self.qemu_version else "unknown"

    def has_driver(self, driver: str) -> bool:
        return self.block_drivers is None or driver in self.block_drivers

    @classmethod
    def from_qmp(cls, schema: Iterable[Mapping[str, Any]], version: Mapping[str, Any] | None = None) -> Capabilities:
        """Build from the replies of ``query-qmp-schema`` and ``query-version``."""
        index = {str(e["name"]): e for e in schema}
        qemu_version = None
        if version is not None:
            q = version.get("qemu", {})
            qemu_version = (int(q.get("major", 0)), int(q.get("minor", 0)), int(q.get("micro", 0)))
        add = index.get("blockdev-add")
        if add is None:
            return cls(qemu_version=qemu_version, luks_detached_header=False, block_drivers=frozenset(),
                       rbd_encrypt_formats=frozenset(), rbd_encrypt_parent=False)
        options = index[str(add["arg-type"])]
        variants = {str(v["case"]): index.get(str(v["type"]), {}) for v in options.get("variants", [])}
        luks_members = _member_names(variants.get("luks", {}))
        rbd_formats: frozenset[str] = frozenset()
        rbd_parent = False
        rbd = variants.get("rbd")
        if rbd is not None:
            encrypt = _member_type(rbd, "encrypt", index)
            if encrypt is not None:
                fmt_type = _member_type(encrypt, "format", index)
                rbd_formats = frozenset(str(v) for v in (fmt_type or {}).get("values", []))
                # 'parent' is a base member of RbdEncryptionOptions (QEMU ≥ 8.0); look in the
                # variants too in case a QEMU ever moves it there
                rbd_parent = "parent" in _member_names(encrypt)
                for variant in encrypt.get("variants", []):
                    if "parent" in _member_names(index.get(str(variant["type"]), {})):
                        rbd_parent = True
        return cls(
            qemu_version=qemu_version,
            luks_detached_header="header" in luks_members,
            block_drivers=frozenset(variants),
            rbd_encrypt_formats=rbd_formats,
            rbd_encrypt_parent=rbd_parent,
        )


def _member_names(obj: Mapping[str, Any]) -> set[str]:
    return {str(m["name"]) for m in obj.get("members", [])}


def _member_type(obj: Mapping[str, Any], member: str, index: Mapping[str, Mapping[str, Any]]) -> Mapping[str, Any] | None:
    for m in obj.get("members", []):
        if m["name"] == member:
            found = index.get(str(m["type"]))
            if found is not None and found.get("meta-type") == "alternate":
                # an alternate (e.g. inline object or reference): take its object branch
                for branch in found.get("members", []):
                    candidate = index.get(str(branch["type"]))
                    if candidate is not None and candidate.get("meta-type") == "object":
                        return candidate
            return found
    return None
