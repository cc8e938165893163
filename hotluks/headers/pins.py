"""``attach --pin``: a header fingerprint recorded on first use and enforced afterwards.

Pins live under the state directory (``STATE/pins/``, one 0600 JSON file per header
location), so they outlive a detach: the next ``attach --pin`` of a disk whose header
sits at the same place is refused if the header there is another one. An explicit
``<fingerprint>`` in the XML is checked by preflight as well; both must agree.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hotluks.errors import HotluksError, PreflightError
from hotluks.model import Disk, Source
from hotluks.secrets import SecretValue


def location_key(source: Source) -> str:
    """A stable text naming where a header lives (kind, path or protocol/name/hosts)."""
    hosts = [[h.name, h.port, h.socket] for h in source.hosts]
    return json.dumps([source.kind, source.path, source.protocol, source.name, hosts], separators=(",", ":"))


class PinStore:
    """Recorded header fingerprints by header location."""

    def __init__(self, directory: Path):
        self.dir = directory

    def _path(self, source: Source) -> Path:
        return self.dir / f"{hashlib.sha256(location_key(source).encode()).hexdigest()[:32]}.json"

    def lookup(self, source: Source) -> str | None:
        """The fingerprint recorded for this header location, or None."""
        try:
            doc = json.loads(self._path(source).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise HotluksError(f"pin record {self._path(source)} is unreadable: {exc}") from None
        if doc.get("location") != location_key(source):
            raise HotluksError(f"pin record {self._path(source)} names another header location")
        return str(doc["fingerprint"])

    def record(self, source: Source, value: str) -> None:
        """Atomically write the pin (0600) for this header location."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            final = self._path(source)
            tmp = final.with_suffix(f".tmp{os.getpid()}")
            doc = {"location": location_key(source), "header": source.describe(), "type": "sha256",
                   "fingerprint": value, "recorded": time.time()}
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(doc, f)
            os.replace(tmp, final)
        except OSError as exc:
            raise HotluksError(f"cannot record the header pin under {self.dir}: {exc.strerror}") from None


@dataclass(frozen=True)
class PinResult:
    """The header's fingerprint and whether this attach is its first (pinned) use."""

    fingerprint: str
    first_use: bool
    source: Source


async def check_pin(disk: Disk, store: PinStore, values: Mapping[str, SecretValue] | None = None,
                    timeout: float = 60.0) -> PinResult:
    """Read the disk's header and compare it with the recorded pin (or prepare to record it).

    Raises :class:`PreflightError` when the disk has no header hotluks can read, or the
    header differs from the pin recorded for its location.
    """
    from hotluks.luks.fingerprint import fingerprint
    from hotluks.runner.preflight import header_source, read_header

    source = header_source(disk)
    if source is None:
        raise PreflightError("--pin needs a LUKS header that hotluks reads (a detached header or an attached "
                             "LUKS volume); this disk has none")
    actual = fingerprint(await read_header(source, values, timeout)).value
    recorded = store.lookup(source)
    if recorded is not None and recorded != actual:
        raise PreflightError(f"preflight: the LUKS header on {source.describe()} has fingerprint sha256:{actual}, "
                             f"but sha256:{recorded} was pinned on first use (replaced or re-encrypted?); "
                             "nothing was sent to the VM")
    return PinResult(actual, recorded is None, source)
