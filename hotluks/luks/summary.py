"""A header as a JSON-friendly summary for ``luks dump``: no secrets, no salts, no control characters. Pure."""

from __future__ import annotations

from typing import Any

from hotluks.luks.metadata import Header
from hotluks.luks.policy import cautions, weak_points

_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, *range(0x80, 0xA0)]}


def printable(text: str) -> str:
    """``text`` with control characters (terminal escape sequences) shown as ``\\xNN``."""
    return text.translate(_CONTROL)


def _clean(value: Any) -> Any:
    """Header fields with control characters escaped, recursively (dump output never drives the terminal)."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def header_summary(hdr: Header) -> dict[str, Any]:
    """A JSON-friendly description of a header (no secrets, no salts, no control characters).

    ``metadata_size`` is what cryptsetup's luksDump calls the metadata area (one
    LUKS2 binary header + JSON area; LUKS1: the header and keyslot areas).
    """
    summary: dict[str, Any] = _clean({
        "version": hdr.version, "uuid": hdr.uuid, "label": hdr.label, "cipher": hdr.cipher,
        "key_bits": hdr.key_bytes * 8, "hash": hdr.hash, "payload_offset": hdr.payload_offset,
        "detached": hdr.detached, "sector_size": hdr.sector_size, "seqid": hdr.seqid,
        "metadata_size": hdr.hdr_size if hdr.version == 2 else hdr.metadata_size,
        **({"keyslots_size": hdr.keyslots_size} if hdr.version == 2 else {}),
        "requirements": list(hdr.requirements), "read_only": hdr.read_only,
        "weak": weak_points(hdr), "warnings": list(hdr.warnings) + cautions(hdr),
        "keyslots": [{"slot": k.index, "type": k.type, "kdf": k.kdf.type, "priority": k.priority,
                      **({"hash": k.kdf.hash, "iterations": k.kdf.iterations} if k.kdf.type == "pbkdf2" else {}),
                      **({"time": k.kdf.time, "memory": k.kdf.memory, "cpus": k.kdf.cpus}
                         if k.kdf.type.startswith("argon2") else {}),
                      "cipher": k.area_cipher, "key_bits": k.key_bytes * 8, "stripes": k.stripes,
                      "af_hash": k.af_hash, "area_offset": k.area_offset, "area_size": k.area_size}
                     for k in hdr.keyslots],
        "segments": [{"segment": s.index, "type": s.type, "offset": s.offset,
                      "size": "dynamic" if s.size is None else s.size, "iv_tweak": s.iv_tweak,
                      "encryption": s.encryption, "sector_size": s.sector_size} for s in hdr.segments],
        "digests": [{"digest": d.index, "type": d.type, "hash": d.hash, "iterations": d.iterations,
                     "keyslots": list(d.keyslots), "segments": list(d.segments)} for d in hdr.digests],
    })
    return summary
