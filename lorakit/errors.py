"""One exception type for every user-facing error.

A ``LorakitError`` carries a one-line message that says what is wrong and what to do.
The CLI prints it (``error: ...``) and exits with status 2, without a traceback.
"""

from __future__ import annotations


class LorakitError(Exception):
    """A user-facing error: one line, what went wrong and what to do about it."""

    def __init__(self, message: str) -> None:
        message = " ".join(str(message).split())  # always one line
        super().__init__(message)
