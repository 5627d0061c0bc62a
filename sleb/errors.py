"""The one exception type the CLI turns into a clear message instead of a traceback."""


class SlebError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""
