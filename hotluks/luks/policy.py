"""Header policy: what makes a LUKS header too weak to trust, and what only deserves a warning. Pure.

A detached header on shared storage can be swapped for one that writes plaintext
(``cipher_null``) or opens with a trivially brute-forced passphrase; hotluks
refuses such headers unless the operator overrides the policy explicitly.
Only the data segment and the keyslots bound to it matter (other keyslots
cannot unlock the volume).
"""

from __future__ import annotations

from hotluks.errors import LuksError
from hotluks.luks.keyslots import bound_digest
from hotluks.luks.metadata import Header

#: cryptsetup's minimums (lib/utils_pbkdf.c: pbkdf2 1000 iterations; argon2 time 4, memory 32 KiB, 1 thread)
MIN_PBKDF2_ITERATIONS = 1000
MIN_ARGON2_TIME = 4
MIN_ARGON2_MEMORY_KIB = 32
MIN_ARGON2_CPUS = 1
OVERRIDE_HINT = "override with --allow-weak-header (API: allow_weak_header=True) if you trust this header"


class WeakHeaderError(LuksError):
    """The header is valid but weak (no encryption, ecb, a KDF below cryptsetup's minimum)."""


def _null(cipher: str) -> bool:
    return cipher.lower().startswith("cipher_null") or cipher.lower() == "null"


def weak_points(header: Header) -> list[str]:
    """Reasons to refuse the header (empty when it passes the policy)."""
    out: list[str] = []
    seg = header.data_segment
    if _null(seg.encryption):
        out.append(f"the data segment is not encrypted ({seg.encryption})")
    elif "-ecb" in seg.encryption.lower():
        out.append(f"the data segment uses ECB mode ({seg.encryption}): equal plaintext blocks show")
    dig = bound_digest(header)
    bound = set(dig.keyslots) if dig else set()
    for slot in header.keyslots:
        if slot.index not in bound:
            continue
        if _null(slot.area_cipher):
            out.append(f"keyslot {slot.index}: its key material is not encrypted ({slot.area_cipher})")
        kdf = slot.kdf
        if kdf.type == "pbkdf2" and kdf.iterations < MIN_PBKDF2_ITERATIONS:
            out.append(f"keyslot {slot.index}: PBKDF2 with {kdf.iterations} iterations "
                       f"(cryptsetup's minimum is {MIN_PBKDF2_ITERATIONS})")
        elif kdf.type in ("argon2i", "argon2id") and (
                kdf.time < MIN_ARGON2_TIME or kdf.memory < MIN_ARGON2_MEMORY_KIB or kdf.cpus < MIN_ARGON2_CPUS):
            out.append(f"keyslot {slot.index}: {kdf.type} time {kdf.time}, memory {kdf.memory} KiB, {kdf.cpus} "
                       f"lanes is below cryptsetup's minimum (time {MIN_ARGON2_TIME}, memory "
                       f"{MIN_ARGON2_MEMORY_KIB} KiB, {MIN_ARGON2_CPUS} lane)")
    return out


def cautions(header: Header) -> list[str]:
    """Weaknesses worth a warning but not a refusal (IV choices)."""
    out: list[str] = []
    enc = header.data_segment.encryption.lower()
    if enc.endswith("-plain"):
        out.append(f"{header.data_segment.encryption}: 32-bit IVs repeat on volumes over 2 TiB (use plain64)")
    if "-cbc-plain" in enc:
        out.append(f"{header.data_segment.encryption}: CBC with predictable IVs allows watermarking (use xts or essiv)")
    return out


def enforce(header: Header, *, allow_weak_header: bool = False) -> list[str]:
    """Raise WeakHeaderError for a weak header unless allowed; return the weak points and cautions as notes."""
    weak = weak_points(header)
    if weak and not allow_weak_header:
        raise WeakHeaderError("weak LUKS header: " + "; ".join(weak) + f" ({OVERRIDE_HINT})")
    return weak + cautions(header)
