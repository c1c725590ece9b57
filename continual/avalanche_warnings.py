"""Silence the DeprecationWarnings that Avalanche raises from its own code."""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

__all__ = ["hide_avalanche_deprecations"]


@contextlib.contextmanager
def hide_avalanche_deprecations() -> Iterator[None]:
    """Hide the DeprecationWarnings raised from Avalanche's own code, and show the others.

    avalanche-lib 0.6's ReplayPlugin and GDumbPlugin call a deprecated buffer method at
    every experience, and its @deprecated decorator resets the warning filter each time,
    so a filter cannot hide them. Replacing showwarning can. The user cannot act on these
    warnings, because they point at Avalanche's code, not at fedgraft's or the user's.
    """
    with warnings.catch_warnings():
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            internal = issubclass(category, DeprecationWarning) and f"{os.sep}avalanche{os.sep}" in filename
            if not internal:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield
