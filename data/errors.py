"""Errors raised by the data loaders."""

__all__ = ["DataError"]


class DataError(ValueError):
    """Data that is missing, truncated, corrupt or inconsistent.

    The message names the path, what was expected, and the command or option that fixes it.
    """
