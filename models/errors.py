"""Errors raised while building a backbone or loading its weights."""

__all__ = ["ModelError"]


class ModelError(ValueError):
    """Unknown backbone name, missing weights or a weights file that does not fit.

    The message names the value that failed, what was expected and how to fix it.
    It subclasses ValueError so that callers validating a configuration can catch both
    in one place.
    """
