"""Errors raised by the core."""


class RsVlmError(Exception):
    """A problem the user can fix.

    The message is a full sentence that says what is wrong and what to do; the GUI,
    Processing and the command line show it as it is, without a traceback.
    """


class CancelledError(RsVlmError):
    """The user cancelled a running job; nothing was written."""

    def __init__(self, message: str = "The job was cancelled; no output was written.") -> None:
        super().__init__(message)
