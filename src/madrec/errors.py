"""The one exception type the CLI turns into a one-line error message, and how a message quotes input."""

import reprlib


class MadrecError(Exception):
    """A problem with the user's input or environment, stated so the user can fix it.

    The message should name the file (and line or field) and say what was expected.
    """


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxlevel = 60, 60, 4, 4, 2


def clip(text: str, limit: int = 300) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"


def quoted(value, limit: int = 60) -> str:
    """`value` for an error message, at most about `limit` characters: a message never echoes a
    whole (possibly huge, possibly deeply nested) input back."""
    if isinstance(value, str):
        return (
            repr(value)
            if len(value) <= limit
            else clip(repr(value[: limit // 2]), limit) + f"...({len(value)} characters)"
        )
    return clip(_SHORT.repr(value), limit + 40)  # reprlib already cut each part
