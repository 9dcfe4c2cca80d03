"""The one exception type users see: it names the problem and the fix (the CLI prints it without a traceback;
anything else is a bug and keeps its traceback)."""


class CifarkitError(Exception):
    """A problem with the user's input or environment, with a message that says how to fix it."""


class DataError(CifarkitError):
    """Missing, malformed or corrupt CIFAR-10 data."""
