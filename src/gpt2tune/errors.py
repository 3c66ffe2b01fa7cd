"""The exception types for problems the user can fix (bad input, missing files, a full disk)."""

import errno
import os


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-line error that quotes it."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class UserError(Exception):
    """A problem with the user's input. Its message is one line that names the problem and the fix;
    the CLI prints it without a traceback and exits with ``exit_code``."""

    exit_code = 2


class WriteError(UserError):
    """Saving failed (no space left, permission denied, a read-only file system, ...): nothing was
    half-written under its final name, and what was saved before is intact."""

    exit_code = 1

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason
        """Why the write failed, without the where ("No space left on device")."""

    @property
    def fix(self) -> str:
        """What the user does about it before running again."""
        return "free some space" if self.reason == os.strerror(errno.ENOSPC) else "fix that"


class RunAborted(UserError):
    """A run stopped for a fault outside the input: another rank died, or torchrun stopped this
    one. What was saved before is intact and ``--resume`` continues from it."""

    exit_code = 1
