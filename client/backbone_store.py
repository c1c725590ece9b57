"""A node's local store of backbone weights, keyed by their SHA-256.

The server sends a backbone only to nodes whose store lacks its hash, so a node that
joined an earlier run with the same weights downloads nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch

from fedgraft.models.state import load_state_file, save_state_file, state_dict_sha256

__all__ = ["BackboneStore", "BackboneHashMismatch"]

logger = logging.getLogger(__name__)


class BackboneHashMismatch(ValueError):
    """Received backbone weights whose SHA-256 differs from the one the server announced."""


class BackboneStore:
    """Backbone state dicts stored as `<root>/backbones/<sha256>.safetensors`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser() / "backbones"

    def path(self, sha256: str) -> Path:
        return self.root / f"{sha256}.safetensors"

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def save(self, state: Mapping[str, torch.Tensor], sha256: str) -> None:
        """Verify `state` against `sha256`, then store it atomically."""
        actual = state_dict_sha256(state)
        if actual != sha256:
            raise BackboneHashMismatch(
                f"received backbone weights hash to {actual}, but the server announced {sha256}; "
                "the transfer was corrupted, so the weights were not stored"
            )
        save_state_file(state, self.path(sha256))
        logger.info("stored backbone %s in %s", sha256[:12], self.root)

    def load(self, sha256: str) -> dict[str, torch.Tensor]:
        """Load the backbone stored under `sha256`; raise FileNotFoundError when it is absent."""
        path = self.path(sha256)
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone {sha256[:12]} is not in the node store {self.root}; "
                "the server sends it at the start of each run"
            )
        return load_state_file(path)
