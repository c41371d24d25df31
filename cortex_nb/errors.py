"""One error type for what the user can fix.

Every refusal that a user can act on (a profile value, a missing or corrupt file, a stale store,
an unwritable directory) is a :class:`UserError`: a message that names the key or file and the
value, and a ``fix`` that says what to do. ``python -m cortex_nb`` prints a UserError as one line
plus its fix, with no traceback unless ``--debug``; notebooks show it as an ordinary exception.
Programming errors (a bug here) are never UserErrors and keep their traceback.

The specialised errors subclass UserError *and* the built-in type they always were
(``ProfileError`` is a ``ValueError``, ``WeightsUnavailableError`` a ``FileNotFoundError``), so
existing ``except`` clauses keep working.
"""
from __future__ import annotations

__all__ = ["UserError", "CheckpointError", "DiskFullError"]


class UserError(Exception):
    """A problem with the user's input that the user can fix; ``fix`` says how (may be empty)."""

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} -- fix: {self.fix}" if self.fix else self.message

    def one_line(self) -> str:
        """The CLI's rendering: the message, then the fix, each flattened to one line."""
        text = " ".join(self.message.split())
        return f"{text}\n  fix: {' '.join(self.fix.split())}" if self.fix else text


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, unreadable, or holds objects we refuse to unpickle."""


class DiskFullError(UserError, OSError):
    """A write found no space left on its device (ENOSPC, or EDQUOT: a quota). The message names the file, what it
    needed and what is free there; the half-written temporary file is already removed and the target untouched."""
