"""Preflight: open each readable LUKS header and check the passphrase before touching the VM.

The check runs in a separate worker process that is killed at the deadline, so a
hostile header (2^31 PBKDF2 iterations, huge argon2 memory) costs at most
``timeout`` seconds and never the caller's memory. It refuses (exit 2):
a wrong passphrase, an invalid header, a LUKS2 header for ``engine='qemu'``
(QEMU's LUKS driver reads LUKS1 only), and a weak header (``cipher_null``, ECB,
a KDF below cryptsetup's minimum) unless ``allow_weak_header=True``. A cipher
or KDF the engine cannot compute is "not checked" and left to QEMU.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from hotluks.errors import HotluksError, LuksError, PreflightError, SecretError
from hotluks.log import get_logger
from hotluks.model import Disk, Engine, Source
from hotluks.secrets import SecretValue

if TYPE_CHECKING:
    from hotluks.luks.metadata import Header as LuksHeader

log = get_logger(__name__)
HEADER_PROBE_BYTES = 16 * 1024 * 1024  # enough for any LUKS1 header and LUKS2 metadata + keyslots
LUKS2_WITH_QEMU_HINT = ("QEMU's LUKS driver (engine='qemu') reads LUKS1 only: convert the header with "
                        "'cryptsetup convert --type luks1' (PBKDF2 keyslots only), or for an RBD image use "
                        "<encryption engine='librbd'>")


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
                        values: Mapping[str, SecretValue] | None = None, timeout: float = 60.0, *,
                        allow_weak_header: bool = False) -> str:
    """Raise :class:`PreflightError` unless the header opens with ``passphrase`` and passes the policy.

    ``values`` holds the other secrets by uuid/usage: an RBD-hosted header with
    ``<auth>`` is read with that Ceph key (base64 text, as ``ceph auth get-key``
    prints it). ``timeout`` bounds the whole check (the worker is killed at the
    deadline). ``allow_weak_header`` lets a weak header through (noted, not refused).
    Returns a short note of what was checked (for listings), never secret.
    """
    source = header_source(disk)
    if source is None:
        return "no LUKS header that hotluks can read (checked by QEMU at attach time)"
    if not checkable(source):
        await verify_pin(disk, values, timeout)  # refuses: a pinned header must be readable
        log.info("preflight skipped: %s is not locally readable", source.describe())
        return f"not checked: {source.describe()} is not locally readable"
    job = {"source": source, "passphrase": passphrase.value, "ceph_key": _ceph_key(source, values or {}),
           "timeout": timeout, "allow_weak_header": allow_weak_header, "pin": pinned_fingerprint(disk),
           "qemu_engine": disk.encryption is not None and disk.encryption.engine is Engine.QEMU}
    grace = 0.5 if source.is_local else 3.0  # a network read gives up at ``timeout`` itself: let its error through
    kind, message = await _run_worker(job, timeout + grace, source)
    where = source.describe()
    if kind.startswith("raise:"):
        raise _error_class(kind[6:])(message)
    if kind == "timeout":
        message = (f"checking the LUKS header took longer than the {timeout:g} s timeout "
                   "(a KDF that slow is unusual; raise --timeout if it is legitimate)")
    if kind == "ok":
        return message
    if kind == "not-checked":
        log.info("preflight: %s not checked: %s", where, message)
        return f"not checked: {message} (QEMU decides at attach time)"
    if kind == "wrong":
        raise PreflightError(f"preflight: the passphrase does not open the LUKS header on {where}; "
                             "nothing was sent to the VM")
    raise PreflightError(f"preflight: {where}: {message}; nothing was sent to the VM")


async def _run_worker(job: dict[str, Any], timeout: float, source: Source) -> tuple[str, str]:
    """Run :func:`worker_main` in a fresh interpreter; kill it at the deadline (or when the caller is cancelled).

    The job (passphrase included) goes through the child's stdin, never its argv.
    """
    import hotluks

    root = os.path.dirname(os.path.dirname(os.path.abspath(hotluks.__file__)))  # this hotluks, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from hotluks.runner.preflight import worker_main; worker_main()",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=env)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(pickle.dumps(job)), max(timeout, 0.001))
    except asyncio.TimeoutError:
        return "timeout", ""
    finally:
        if proc.returncode is None:
            proc.kill()
            await asyncio.shield(proc.wait())
    try:
        kind, message = pickle.loads(out)
        return str(kind), str(message)
    except Exception:
        return "error", f"the header check failed (worker exit {proc.returncode})"


def _error_class(name: str) -> type[HotluksError]:
    """The hotluks error class a worker reported (``module:Class``); PreflightError for anything else."""
    import importlib

    module, _, qualname = name.partition(":")
    try:
        cls = getattr(importlib.import_module(module), qualname) if module.startswith("hotluks.") else None
    except (ImportError, AttributeError):
        cls = None
    return cls if isinstance(cls, type) and issubclass(cls, HotluksError) else PreflightError


def worker_main() -> None:
    """Entry point of the worker process: job on stdin, (kind, message) on stdout, never a traceback."""
    result_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything a library prints goes to stderr, not into the result
    try:
        result = _check(pickle.loads(sys.stdin.buffer.read()))
    except BaseException as exc:  # report everything as a message; the parent decides
        result = _classify(exc)
    result_out.write(pickle.dumps(result))
    result_out.close()


def _classify(exc: BaseException) -> tuple[str, str]:
    from hotluks.errors import HotluksError, LuksError, LuksUnsupportedError, WrongPassphraseError

    if isinstance(exc, WrongPassphraseError):
        return "wrong", str(exc)
    if isinstance(exc, LuksUnsupportedError):
        return "not-checked", str(exc)
    if isinstance(exc, HotluksError) and not isinstance(exc, LuksError):  # e.g. RbdReadError: re-raised as is
        return f"raise:{type(exc).__module__}:{type(exc).__qualname__}", str(exc)
    if isinstance(exc, HotluksError):
        return "error", str(exc)
    if isinstance(exc, OSError):
        return "error", f"cannot read the header: {exc.strerror or exc}"
    if isinstance(exc, MemoryError):
        return "error", "the header check ran out of memory"
    return "error", f"the header check failed ({exc.__class__.__name__})"


def _check(job: dict[str, Any]) -> tuple[str, str]:
    """The worker's check: read the header once; the pin first (no KDF work on a swapped header),
    then LUKS version, policy and passphrase."""
    from hotluks import luks
    from hotluks.errors import LuksUnsupportedError
    from hotluks.luks.policy import enforce

    source: Source = job["source"]
    header = _read(source, job["ceph_key"], job["timeout"])
    if job.get("pin"):
        check_fingerprint(header, job["pin"], source.describe())
    if job["qemu_engine"] and header.version != 1:
        return "error", f"the header is LUKS{header.version}; {LUKS2_WITH_QEMU_HINT}"
    notes = enforce(header, allow_weak_header=job["allow_weak_header"])
    warnings = "; warnings: " + "; ".join(notes) if notes else ""
    pinned = " and matches its pinned fingerprint" if job.get("pin") else ""
    try:
        luks.unlock(header, job["passphrase"])
    except LuksUnsupportedError as exc:
        return "not-checked", f"{exc}{warnings}"
    return "ok", f"header on {source.describe()} opens with the passphrase{pinned}{warnings}"


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
    check_fingerprint(await read_header(source, values, timeout), pin, source.describe())
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
