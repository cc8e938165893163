"""Typed errors. Each carries the process exit code the CLI maps it to.

Exit codes (shared by every command):
  0 success
  1 operation failed and was fully rolled back (VM unchanged) / wrong passphrase
  2 refused before anything was done (bad input, preflight, capability, conflict)
  3 operation failed and was NOT fully rolled back: run ``hotluks repair``

Messages never contain secret material.
"""

from __future__ import annotations


class HotluksError(Exception):
    """Base of every error hotluks raises on purpose."""

    exit_code = 2


class InputError(HotluksError):
    """The input (XML, arguments, files) is invalid; nothing was done."""


class XMLError(InputError):
    """The <disk> XML is malformed, fails the schema, or is semantically invalid."""

    def __init__(self, message: str, line: int | None = None, source: str | None = None):
        self.line = line
        self.source = source
        where = ""
        if source:
            where = f"{source}:"
        if line is not None:
            where += f"{line}:"
        super().__init__(f"{where} {message}".strip() if where else message)


class UnsupportedError(InputError):
    """Valid input that hotluks or the target cannot handle."""


class SecretError(InputError):
    """A secret is missing, unreadable or malformed."""


class LuksError(HotluksError):
    """Base of LUKS engine errors."""


class LuksFormatError(LuksError):
    """The LUKS header is invalid or damaged."""


class LuksUnsupportedError(LuksError, UnsupportedError):
    """The LUKS header uses a cipher, hash, KDF or feature the engine does not support."""


class WrongPassphraseError(LuksError):
    """No keyslot opens with the given passphrase."""

    exit_code = 1


class ReadOnlyHeaderError(LuksError):
    """The header has requirements the engine does not know: it may be read, not changed."""


class RefusedError(HotluksError):
    """The operation was refused before touching the VM (capability, preflight, conflict)."""


class CapabilityError(RefusedError):
    """The QEMU (or librbd) behind the VM lacks a feature the plan needs."""


class ConflictError(RefusedError):
    """Names, targets or addresses already exist in the VM."""


class PreflightError(RefusedError):
    """The LUKS preflight (header + passphrase check) failed."""


class LockedError(RefusedError):
    """Another hotluks operation holds the VM's lock."""


class BackendError(HotluksError):
    """Talking to QEMU or libvirt failed (connection, timeout, protocol)."""


class RolledBackError(HotluksError):
    """A step failed and every earlier step was undone; the VM is unchanged."""

    exit_code = 1


class IncompleteError(HotluksError):
    """A step failed and rollback did not fully succeed; run ``hotluks repair``."""

    exit_code = 3


class DetachTimeoutError(HotluksError):
    """The guest did not release the device in time; nothing was deleted under it."""

    exit_code = 1
