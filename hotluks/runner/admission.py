"""The LUKS checks an attach passes before it takes the VM's lock; a failure changes nothing.

In order: the header pin (``--pin``: compared with the fingerprint recorded for the header's
location, or prepared for recording on first use), the passphrase's encoding, then the
preflight that opens the header with it. Without the preflight (``--no-preflight``, or no
passphrase hotluks holds) a fingerprint pinned in the XML is still checked.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hotluks.headers.pins import PinResult, PinStore, check_pin
from hotluks.model import Disk
from hotluks.runner.preflight import check_passphrase_encoding, pick_passphrase, run_preflight, verify_pin
from hotluks.secrets import SecretValue

SKIPPED = "skipped (--no-preflight)"


@dataclass(frozen=True)
class Admission:
    """What the checks found: the preflight's note, and the pin (with ``pin``) to record on success."""

    note: str
    pinned: PinResult | None

    @property
    def header_fingerprint(self) -> str | None:
        return self.pinned.fingerprint if self.pinned else None


async def admit(disk: Disk, values: Mapping[str, SecretValue], pins: PinStore, *, pin: bool, preflight: bool,
                allow_weak_header: bool, timeout: float) -> Admission:
    """Run the checks; raise a typed error (exit 2) for the first that fails."""
    pinned = await check_pin(disk, pins, values, timeout) if pin else None
    passphrase = pick_passphrase(disk, values)
    if passphrase is not None:
        check_passphrase_encoding(disk, passphrase)
    if preflight and passphrase is not None:
        note = await run_preflight(disk, passphrase, values, timeout, allow_weak_header=allow_weak_header)
    else:  # a pinned header is checked even without the passphrase preflight
        note = await verify_pin(disk, values, timeout) or SKIPPED
    return Admission(note, pinned)
