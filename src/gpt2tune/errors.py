"""The exception types for problems the user can fix (bad input, missing files, a full disk).

An error names the option it concerns by its field name in backquotes (```block_size```), never
by a front end's spelling of it: the CLI prints ``--block-size``, the server's JSON error
``block_size`` with ``"param": "block_size"``. So the library speaks neither the CLI's language
nor HTTP's, and each front end phrases the same error for its own users.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable

_FIELD = re.compile(r"`([a-z][a-z0-9_]*)`")


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none), for a
    one-line error that quotes it."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def as_flag(field: str) -> str:
    """A field's command-line spelling: ``max_batch`` -> ``--max-batch``."""
    return "--" + field.replace("_", "-")


class UserError(Exception):
    """A problem with the user's input. Its message is one line that names the problem and the fix;
    the CLI prints it without a traceback and exits with ``exit_code``.

    Args:
        message: the problem and the fix; option names in backquotes (```block_size```), which
            each front end spells its own way (``phrased``).
        field: the option the error concerns; default: the first one the message names.
    """

    exit_code = 2

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.template = message
        """The message with option names in backquotes."""
        named = _FIELD.search(message)
        self.field = field if field is not None else (named.group(1) if named else None)
        """The option the error concerns (``block_size``), or None."""

    def phrased(self, spell: Callable[[str], str] = str) -> str:
        """The message with each option name spelt by ``spell`` (``as_flag`` for the CLI)."""
        return _FIELD.sub(lambda m: spell(m.group(1)), self.template)

    def __str__(self) -> str:
        return self.phrased()


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
