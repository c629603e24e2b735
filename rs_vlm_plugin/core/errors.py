"""Errors raised by the core, and how their sentences are printed."""


class RsVlmError(Exception):
    """A problem the user can fix.

    The message is a full sentence that says what is wrong and what to do; the GUI,
    Processing and the command line show it as it is, without a traceback.
    """


class CancelledError(RsVlmError):
    """The user cancelled a running job; nothing was written."""

    def __init__(self, message: str = "The job was cancelled; no output was written.") -> None:
        super().__init__(message)


def one_line(message: str) -> str:
    """``message`` with its control characters written as escapes (``\\n``, ``\\x1b``), so that a file
    name or a text holding them keeps the sentence on one line and cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in message)
