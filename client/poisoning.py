"""Poisoned updates for simulations: chosen nodes send a harmful update in place of their own.

This exists to measure how the aggregation strategies and guards hold up against a
faulty or malicious node. `poisoned-nodes` lists simulated partition ids and `poison`
names the change those nodes apply to their update, the trained arrays minus the
round's global arrays:

- `scale:F` multiplies the update by F (a boosted update, such as scale:100);
- `sign-flip` negates it, so the node pushes the model away from its own data;
- `nan` replaces it with NaN, as a diverged node would send.

Only nodes that the simulation engine started take part: a node whose node config names
a `data-path`, as a deployed node's does, or that lacks a `partition-id` never poisons.
Integer arrays such as BatchNorm's `num_batches_tracked` are sent unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord

from fedgraft.config import RunConfig

__all__ = ["Poison", "PoisonKind", "parse_poisoned_nodes", "poison_reply_arrays", "poison_update"]

logger = logging.getLogger(__name__)

SCALE_PREFIX = "scale:"


class PoisonKind(str, Enum):
    """The change a poisoned node applies to its update."""

    SCALE = "scale"
    SIGN_FLIP = "sign-flip"
    NAN = "nan"


@dataclass(frozen=True)
class Poison:
    """A parsed `poison` setting: the kind and, for scale, the factor."""

    kind: PoisonKind
    factor: float = 1.0

    @classmethod
    def parse(cls, text: str) -> Poison:
        """Parse `scale:F`, `sign-flip` or `nan`; raise ValueError naming the accepted forms."""
        text = text.strip()
        if text.startswith(SCALE_PREFIX):
            try:
                factor = float(text[len(SCALE_PREFIX):])
            except ValueError:
                raise ValueError(f"{text!r} has no number after {SCALE_PREFIX!r}; write scale:100") from None
            if not np.isfinite(factor):
                raise ValueError(f"{text!r} has a factor that is not finite; use nan for NaN updates")
            return cls(PoisonKind.SCALE, factor)
        if text == PoisonKind.SIGN_FLIP.value:
            return cls(PoisonKind.SIGN_FLIP)
        if text == PoisonKind.NAN.value:
            return cls(PoisonKind.NAN)
        raise ValueError(f"{text!r} is not a poison; expected scale:FACTOR (such as scale:100), sign-flip or nan")

    def apply(self, update: np.ndarray) -> np.ndarray:
        """Return the poisoned version of one floating-point update array."""
        if self.kind is PoisonKind.SCALE:
            return update * self.factor
        if self.kind is PoisonKind.SIGN_FLIP:
            return -update
        return np.full_like(update, np.nan)

    def __str__(self) -> str:
        if self.kind is PoisonKind.SCALE:
            return f"{SCALE_PREFIX}{self.factor:g}"
        return self.kind.value


def parse_poisoned_nodes(text: str) -> frozenset[int]:
    """Parse comma-separated partition ids such as "0,3"; raise ValueError on anything else."""
    ids = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"{part!r} is not a partition id; expected integers >= 0 such as 0,3")
        ids.add(int(part))
    return frozenset(ids)


def poison_update(
    trained: Mapping[str, np.ndarray], received: Mapping[str, np.ndarray], poison: Poison
) -> dict[str, np.ndarray]:
    """Return received + poison(trained - received) for every floating-point array.

    Integer arrays keep their trained values, and every array keeps its dtype and shape.
    """
    poisoned = {}
    for key, value in trained.items():
        if not np.issubdtype(value.dtype, np.floating):
            poisoned[key] = value
            continue
        base = received[key].astype(np.float64)
        update = value.astype(np.float64) - base
        poisoned[key] = (base + poison.apply(update)).astype(value.dtype)
    return poisoned


def poison_reply_arrays(
    arrays: ArrayRecord, received: ArrayRecord, cfg: RunConfig, node_config: Mapping[str, Any]
) -> ArrayRecord:
    """Return the train reply's arrays, poisoned when `cfg` lists this simulated node.

    `arrays` are the node's trained arrays and `received` the round's global arrays that
    its train message carried. Nodes that are not listed get `arrays` back unchanged.
    """
    if not cfg.poisoned_nodes or "data-path" in node_config or "partition-id" not in node_config:
        return arrays
    partition_id = int(node_config["partition-id"])
    if partition_id not in parse_poisoned_nodes(cfg.poisoned_nodes):
        return arrays

    poison = Poison.parse(cfg.poison)
    trained = {key: array.numpy() for key, array in arrays.items()}
    global_arrays = {key: array.numpy() for key, array in received.items()}
    poisoned = poison_update(trained, global_arrays, poison)
    logger.warning("node partition %d: sending a poisoned update (%s), as --poisoned-nodes asks",
                   partition_id, poison)
    return ArrayRecord({key: Array(value) for key, value in poisoned.items()})
