"""Typed errors: one root (:class:`HotluksError`), each class with the exit code the CLI maps it to.

Exit codes (shared by every command):
  0 success
  1 operation failed and was fully rolled back (VM unchanged) / wrong passphrase
  2 refused before anything was done (bad input, preflight, capability, conflict)
  3 operation failed and was NOT fully rolled back: run ``hotluks repair``

Classes that name what went wrong for an agent (``DomainNotFound``, ``NotRunning``,
``NotAttached``, ``InvalidDisk``, ``Conflict``, ``PreflightFailed``, ``RolledBack``,
``Incomplete``) subclass the broader ones, so ``except InputError`` keeps catching them.
Messages never contain secret material.
"""

from __future__ import annotations


class HotluksError(Exception):
    """Base of every error hotluks raises on purpose."""

    exit_code = 2


# -- refused: bad input (exit 2) --------------------------------------------------------------
class InputError(HotluksError):
    """The input (XML, arguments, files) is invalid; nothing was done."""


class InvalidDisk(InputError):
    """The ``<disk>`` given is unusable: a missing or unreadable file, or not a ``<disk>`` at all."""


class XMLError(InvalidDisk):
    """The ``<disk>`` XML is malformed, fails the schema, or is semantically invalid."""

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


class DomainNotFound(InputError):
    """No such VM: no libvirt domain of that name/UUID, or no QMP socket at that path."""


class NotRunning(InputError):
    """The VM exists but its QEMU is not running (domain shut off, nobody on the socket)."""


class NotAttached(InputError):
    """hotluks has no attachment on that target of the VM."""


# -- the LUKS engine --------------------------------------------------------------------------
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


# -- refused: the VM or the plan does not allow it (exit 2) -----------------------------------
class RefusedError(HotluksError):
    """The operation was refused before touching the VM (capability, preflight, conflict)."""


class CapabilityError(RefusedError):
    """The QEMU (or librbd) behind the VM lacks a feature the plan needs."""


class Conflict(RefusedError):
    """Names, targets or addresses already exist in the VM (another disk holds the target)."""


class PreflightFailed(RefusedError):
    """The LUKS preflight (header + passphrase check) failed."""


class LockedError(RefusedError):
    """Another hotluks operation holds the VM's lock."""


# -- talking to QEMU / libvirt ----------------------------------------------------------------
class BackendError(HotluksError):
    """Talking to QEMU or libvirt failed (connection, timeout, protocol)."""


class MalformedReply(BackendError):
    """The monitor's reply has the wrong shape (not what QEMU sends); after a change: rollback (1) or repair (3).

    Before the first change to the VM it is exit 2, like any monitor failure; see
    :mod:`hotluks.backends.replies`.
    """


# -- after the first change to the VM ---------------------------------------------------------
class RolledBack(HotluksError):
    """A step failed and every earlier step was undone; the VM is unchanged."""

    exit_code = 1


class Incomplete(HotluksError):
    """A step failed and rollback did not fully succeed; run ``hotluks repair``."""

    exit_code = 3


class DetachTimeoutError(HotluksError):
    """The guest did not release the device in time; nothing was deleted under it."""

    exit_code = 1


# the names hotluks used before the agent-facing ones (same classes)
ConflictError = Conflict
PreflightError = PreflightFailed
RolledBackError = RolledBack
IncompleteError = Incomplete


def error_classes() -> list[type[HotluksError]]:
    """Every public error class once (aliases folded), in definition order."""
    seen: list[type[HotluksError]] = []
    for name, value in globals().items():
        if (isinstance(value, type) and issubclass(value, HotluksError) and value.__name__ == name
                and value not in seen):
            seen.append(value)
    return seen
