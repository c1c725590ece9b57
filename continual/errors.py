"""Errors raised while building task streams and continual-learning strategies."""

__all__ = ["StrategyError", "StreamError"]


class StreamError(ValueError):
    """A task stream that cannot be built from the given data or settings.

    The message names the value that failed, what was expected and how to fix it.
    """


class StrategyError(ValueError):
    """An unknown strategy name or a strategy setting outside its valid range.

    The message names the value that failed, what was expected and how to fix it.
    """
