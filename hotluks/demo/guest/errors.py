"""Errors of the tiny test/demo guest."""

from __future__ import annotations

from hotluks.errors import HotluksError


class GuestError(HotluksError):
    """Base of every error about the tiny Linux guest."""


class GuestUnavailableError(GuestError):
    """The guest cannot be built here (no kernel package, busybox or tools).

    Callers such as ``hotluks demo`` catch this and fall back to a guest-less VM.
    """


class GuestBootError(GuestError):
    """QEMU started but the guest agent did not become ready in time."""

    exit_code = 1


class GuestAgentError(GuestError):
    """The guest agent timed out, disconnected or answered a command with a failure."""

    exit_code = 1

    def __init__(self, message: str, *, command: str | None = None, status: int | None = None,
                 output: tuple[str, ...] = ()):
        self.command = command
        self.status = status
        self.output = output
        super().__init__(message)
