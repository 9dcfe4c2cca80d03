"""The one exception type users see: it names the problem and the fix.

The CLI prints ``CifarkitError`` messages without a traceback and exits with
status 2; anything else is a bug and keeps its traceback.
"""


class CifarkitError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class DataError(CifarkitError):
    """Missing, malformed or corrupt CIFAR-10 data."""
