"""Logging for fedgraft's processes: one `fedgraft` logger with one console handler."""

from __future__ import annotations

import logging
import sys

__all__ = ["configure_logging"]


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """Give the `fedgraft` logger a console handler once; return it."""
    logger = logging.getLogger("fedgraft")
    if not any(getattr(handler, "_fedgraft", False) for handler in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler._fedgraft = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
    return logger
