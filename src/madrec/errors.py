"""The one exception type the CLI turns into a one-line error message."""


class MadrecError(Exception):
    """A problem with the user's input or environment, stated so the user can fix it.

    The message should name the file (and line or field) and say what was expected.
    """
