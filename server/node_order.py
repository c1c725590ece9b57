"""A stable order of nodes, so that sampling and aggregation repeat exactly under one seed.

Flower's node ids are random per run and replies arrive in completion order. Sorting both
by the name each node reported (its partition id or data path) makes node sampling and the
floating-point order of aggregation the same in every run with the same seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from flwr.app import Message
from flwr.serverapp import Grid

__all__ = ["NodeOrderedGrid", "wait_for_nodes"]

logger = logging.getLogger(__name__)


def wait_for_nodes(grid: Grid, count: int, timeout: float, poll_seconds: float = 1.0) -> list[int]:
    """Wait until `count` nodes are connected; return their ids, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        node_ids = sorted(grid.get_node_ids())
        if len(node_ids) >= count:
            return node_ids
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"only {len(node_ids)} of {count} nodes connected within {timeout:.0f} s; "
                "start more SuperNodes or lower --num-clients"
            )
        logger.info("waiting for nodes: %d of %d connected", len(node_ids), count)
        time.sleep(poll_seconds)


class NodeOrderedGrid:
    """A Grid whose node ids and replies come sorted by node name."""

    def __init__(self, grid: Grid, node_names: dict[int, str]) -> None:
        self._grid = grid
        self._node_names = node_names

    def _key(self, node_id: int) -> tuple[int, str, int]:
        name = self._node_names.get(node_id)
        # Unnamed nodes (joined after distribution) go last, by id.
        return (0, name, 0) if name is not None else (1, "", node_id)

    def get_node_ids(self) -> list[int]:
        return sorted(self._grid.get_node_ids(), key=self._key)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        replies = self._grid.send_and_receive(messages, timeout=timeout)
        return sorted(replies, key=lambda reply: self._key(reply.metadata.src_node_id))

    def __getattr__(self, name: str):
        return getattr(self._grid, name)
