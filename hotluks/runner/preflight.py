"""Preflight: open each readable LUKS header and check the passphrase before touching the VM."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from hotluks.errors import LuksError, PreflightError, SecretError, WrongPassphraseError
from hotluks.model import Disk, Engine, Source
from hotluks.secrets import SecretValue

if TYPE_CHECKING:
    from hotluks.luks.metadata import Header as LuksHeader

log = logging.getLogger(__name__)
HEADER_PROBE_BYTES = 16 * 1024 * 1024  # enough for any LUKS1 header and LUKS2 metadata + keyslots


def header_source(disk: Disk) -> Source | None:
    """The source that holds the disk's LUKS header, if QEMU's luks driver reads one."""
    enc = disk.encryption
    if enc is None or enc.engine is Engine.LIBRBD:
        return None
    if enc.header is not None:
        return enc.header.source
    if disk.format == "raw":
        return disk.source
    return None  # qcow2-native: the LUKS header lives inside the qcow2 metadata


def checkable(source: Source) -> bool:
    return source.is_local or source.protocol in ("rbd", "nbd", "iscsi")


async def run_preflight(disk: Disk, passphrase: SecretValue,
                        values: Mapping[str, SecretValue] | None = None, timeout: float = 60.0) -> str:
    """Raise :class:`PreflightError` unless the header opens with ``passphrase``.

    ``values`` holds the other secrets by uuid/usage: an RBD-hosted header with
    ``<auth>`` is read with that Ceph key (base64 text, as ``ceph auth get-key``
    prints it). Returns a short note of what was checked (for listings), never secret.
    """
    source = header_source(disk)
    if source is None:
        return "no LUKS header that hotluks can read (checked by QEMU at attach time)"
    if not checkable(source):
        await verify_pin(disk, values, timeout)  # refuses: a pinned header must be readable
        log.info("preflight skipped: %s is not locally readable", source.describe())
        return f"not checked: {source.describe()} is not locally readable"
    pin = pinned_fingerprint(disk)
    try:
        await asyncio.to_thread(_check, source, passphrase.value, _ceph_key(source, values or {}), timeout, pin)
    except WrongPassphraseError:
        raise PreflightError(f"preflight: the passphrase does not open the LUKS header on {source.describe()}; "
                             "nothing was sent to the VM") from None
    except LuksError as exc:
        raise PreflightError(f"preflight: {source.describe()}: {exc}; nothing was sent to the VM") from None
    pinned = " and matches its pinned fingerprint" if pin else ""
    return f"header on {source.describe()} opens with the passphrase{pinned}"


def pinned_fingerprint(disk: Disk) -> str | None:
    """The fingerprint ``<header><fingerprint>`` pins, if any."""
    enc = disk.encryption
    return enc.header.fingerprint if enc is not None and enc.header is not None else None


async def verify_pin(disk: Disk, values: Mapping[str, SecretValue] | None = None,
                     timeout: float = 60.0) -> str | None:
    """Check only the pinned header fingerprint (also when the passphrase preflight is skipped).

    Returns a note, or None when the disk pins nothing; raises :class:`PreflightError`
    on a mismatch or when the pinned header cannot be read.
    """
    pin = pinned_fingerprint(disk)
    source = header_source(disk)
    if pin is None or source is None:
        return None
    if not checkable(source):
        raise PreflightError(f"preflight: the header on {source.describe()} is pinned but hotluks cannot read it "
                             "to check its fingerprint; nothing was sent to the VM")
    try:
        await asyncio.to_thread(_check, source, None, _ceph_key(source, values or {}), timeout, pin)
    except LuksError as exc:
        raise PreflightError(f"preflight: {source.describe()}: {exc}; nothing was sent to the VM") from None
    return f"header on {source.describe()} matches its pinned fingerprint"


def check_fingerprint(header_bytes_source: LuksHeader | str | bytes, expected: str, where: str = "the header") -> None:
    """Raise :class:`PreflightError` unless the header (a parsed header, a path or bytes) has ``expected``."""
    from hotluks import luks
    from hotluks.luks.fingerprint import fingerprint, normalise

    header = header_bytes_source if isinstance(header_bytes_source, luks.Header) \
        else luks.open_header(header_bytes_source)
    actual = fingerprint(header).value
    if actual != normalise(expected):
        raise PreflightError(f"preflight: the LUKS header on {where} has fingerprint sha256:{actual}, not the pinned "
                             f"sha256:{normalise(expected)} (replaced or re-encrypted?); nothing was sent to the VM")


def _ceph_key(source: Source, values: Mapping[str, SecretValue]) -> bytes | None:
    """The cephx key (base64 text) of an rbd source's ``<auth>`` (or an iSCSI CHAP password), if given."""
    if source.auth is None:
        return None
    ref = source.auth.secret
    for key in (ref.uuid, ref.usage):
        if key is not None and key in values:
            return values[key].value.strip()
    return None


async def read_header(source: Source, values: Mapping[str, SecretValue] | None = None,
                      timeout: float = 60.0) -> LuksHeader:
    """Read and parse the LUKS header on ``source`` (PreflightError when hotluks cannot read it)."""
    if not checkable(source):
        raise PreflightError(f"preflight: hotluks cannot read the header on {source.describe()}")
    try:
        return await asyncio.to_thread(_read, source, _ceph_key(source, values or {}), timeout)
    except LuksError as exc:
        raise PreflightError(f"preflight: {source.describe()}: {exc}; nothing was sent to the VM") from None


def _read(source: Source, ceph_key: bytes | None, timeout: float) -> LuksHeader:
    from hotluks import luks

    if source.is_local:
        try:
            return luks.open_header(str(source.path))
        except OSError as exc:
            raise PreflightError(f"preflight: cannot read {source.describe()}: {exc.strerror}") from None
    if source.protocol in ("nbd", "iscsi"):
        from hotluks.headers.tls import nbd_tls_dir
        from hotluks.nbd_read import read_network_head

        return luks.open_header(read_network_head(source, HEADER_PROBE_BYTES, tls_dir=nbd_tls_dir(),
                                                  password=ceph_key, timeout=timeout))
    from hotluks.rbd_read import read_rbd_head

    return luks.open_header(read_rbd_head(source, HEADER_PROBE_BYTES, key=ceph_key, timeout=timeout))


def _check(source: Source, passphrase: bytes | None, ceph_key: bytes | None = None, timeout: float = 60.0,
           pin: str | None = None) -> None:
    """Read the header once; check the pin first (no KDF work on a swapped header), then the passphrase."""
    from hotluks import luks

    header = _read(source, ceph_key, timeout)
    if pin is not None:
        check_fingerprint(header, pin, source.describe())
    if passphrase is not None:
        luks.unlock(header, passphrase)


def check_passphrase_encoding(disk: Disk, passphrase: SecretValue) -> None:
    """QEMU's own LUKS code only takes UTF-8 passphrases (librbd takes any bytes)."""
    enc = disk.encryption
    if enc is None or enc.engine is Engine.LIBRBD:
        return
    try:
        passphrase.value.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(f"the passphrase for {enc.secrets[0].describe()} is not valid UTF-8, which QEMU's "
                          "LUKS driver requires; nothing was sent to the VM") from None


def pick_passphrase(disk: Disk, values: Mapping[str, SecretValue]) -> SecretValue | None:
    """The value of the disk's (first) passphrase secret, if known."""
    if disk.encryption is None:
        return None
    ref = disk.encryption.secrets[0]
    for key in (ref.uuid, ref.usage):
        if key is not None and key in values:
            return values[key]
    return None
