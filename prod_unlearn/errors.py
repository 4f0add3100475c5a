"""The error a user's setting raises: one line naming the option (or field), the value and what is
expected. The CLI prints it as ``error: ...`` and exits 2; the Python API lets it propagate."""


class UsageError(ValueError):
    """A bad option value: the message is one line naming the option, the value and what is expected."""
