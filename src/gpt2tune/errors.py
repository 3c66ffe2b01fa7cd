"""The one exception type for problems the user can fix (bad input, missing files)."""


class UserError(Exception):
    """A problem with the user's input. Its message is one line that names the problem and the fix;
    the CLI prints it without a traceback and exits non-zero."""
