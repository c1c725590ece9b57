"""Differential privacy: Flower's DP strategy wrappers around the aggregation strategy.

`dp` selects one of Flower 1.42's four wrappers from `flwr.serverapp.strategy`:

- `server-fixed`: DifferentialPrivacyServerSideFixedClipping. The server clips each
  node's update (reply arrays minus the round's global arrays) to L2 norm
  `dp-clipping-norm`, averages, and adds Gaussian noise to the average.
- `server-adaptive`: DifferentialPrivacyServerSideAdaptiveClipping. As above, but the
  clipping norm follows a noisy quantile of the update norms (Andrew et al., 2019).
- `client-fixed` / `client-adaptive`: the client-side variants. Each node clips its own
  update in a client mod (`fedgraft.client.privacy.dp_clipping_mod`) before replying,
  and the server only adds the noise.

In every mode the noise's standard deviation is noise_multiplier * clipping_norm / m,
where m is the number of nodes sampled per round. That is the Gaussian mechanism for the
mean of m updates whose L2 norm is at most the clipping norm, so it protects a whole
node's update (node-level DP), not single samples. The calibration only holds when every
node has the same weight, so `UniformNodeWeights` averages the replies unweighted.
fedgraft passes no privacy accountant to the wrappers, so no epsilon is computed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import Enum

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedgraft.config import RunConfig
from fedgraft.strategies.guarded import NUM_EXAMPLES_KEY

__all__ = [
    "DP_STRATEGIES",
    "DpMode",
    "UniformNodeWeights",
    "adaptive_count_stddev",
    "wrap_with_privacy",
]

logger = logging.getLogger(__name__)

# The wrappers calibrate noise to the mean of the clipped updates. A median, a Krum
# selection or a server optimizer such as FedAdam turns that mean into something whose
# sensitivity the noise was not sized for, so only these strategies are allowed with dp.
DP_STRATEGIES = ("fedavg", "fedprox")

class DpMode(str, Enum):
    """A `--dp` setting: the side that clips updates and the rule for the clipping norm."""

    OFF = ""
    SERVER_FIXED = "server-fixed"
    SERVER_ADAPTIVE = "server-adaptive"
    CLIENT_FIXED = "client-fixed"
    CLIENT_ADAPTIVE = "client-adaptive"

    @property
    def is_adaptive(self) -> bool:
        return self in (DpMode.SERVER_ADAPTIVE, DpMode.CLIENT_ADAPTIVE)

    @property
    def clips_on_client(self) -> bool:
        return self in (DpMode.CLIENT_FIXED, DpMode.CLIENT_ADAPTIVE)


def adaptive_count_stddev(cfg: RunConfig, num_sampled_nodes: int) -> float:
    """Return the noise standard deviation on the clipped-update count that the adaptive modes use.

    0 in the config stands for Flower's own default, nodes per round / 20.
    """
    if cfg.dp_clipped_count_stddev > 0:
        return cfg.dp_clipped_count_stddev
    return num_sampled_nodes / 20


def wrap_with_privacy(strategy: Strategy, cfg: RunConfig, num_sampled_nodes: int) -> Strategy:
    """Return `strategy` wrapped in the Flower DP wrapper that `cfg.dp` names, or unchanged when dp is off.

    `num_sampled_nodes` is the number of nodes each round trains, m in the noise's
    standard deviation noise_multiplier * clipping_norm / m.
    NOTE: with `--min-nodes` below the sampled count, the caller passes that minimum, so
    a round where more nodes reply gets more noise than its size needs.
    """
    mode = DpMode(cfg.dp)
    if mode is DpMode.OFF:
        return strategy
    if cfg.dp_noise_multiplier == 0:
        logger.warning("dp %s: --dp-noise-multiplier is 0, so updates are clipped but no noise is added "
                       "and the run has no differential privacy", mode.value)

    if mode is DpMode.SERVER_FIXED:
        wrapped = DifferentialPrivacyServerSideFixedClipping(
            strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, num_sampled_nodes
        )
    elif mode is DpMode.CLIENT_FIXED:
        wrapped = DifferentialPrivacyClientSideFixedClipping(
            strategy, cfg.dp_noise_multiplier, cfg.dp_clipping_norm, num_sampled_nodes
        )
    else:
        adaptive = (
            DifferentialPrivacyServerSideAdaptiveClipping
            if mode is DpMode.SERVER_ADAPTIVE
            else DifferentialPrivacyClientSideAdaptiveClipping
        )
        wrapped = adaptive(
            strategy,
            cfg.dp_noise_multiplier,
            num_sampled_nodes,
            initial_clipping_norm=cfg.dp_clipping_norm,
            target_clipped_quantile=cfg.dp_target_quantile,
            clip_norm_lr=cfg.dp_clip_norm_lr,
            clipped_count_stddev=adaptive_count_stddev(cfg, num_sampled_nodes),
        )
    logger.info(
        "dp %s: clipping norm %g, noise multiplier %g, %d nodes per round",
        mode.value, cfg.dp_clipping_norm, cfg.dp_noise_multiplier, num_sampled_nodes,
    )
    return UniformNodeWeights(wrapped, drop_zero_updates=not mode.clips_on_client)


class UniformNodeWeights(Strategy):
    """Give every train reply the same weight, and its arrays the global model's key order.

    Flower's DP wrappers size the noise for an unweighted mean: with sample-count weights
    a node with many examples would move the mean by more than clipping_norm / m. The
    wrappers also pair reply arrays with global arrays by position, so a reply whose keys
    come in another order would be clipped against the wrong arrays.
    Federated evaluation stays weighted by each node's validation-set size.

    The noise comes from OS entropy, not from --seed, so runs with dp are not
    bit-for-bit repeatable.

    With `drop_zero_updates`, a reply identical to the global arrays is dropped and
    logged, because Flower 1.42's server-side clipping divides by the update's norm and
    would raise ZeroDivisionError on it.
    """

    def __init__(self, inner: Strategy, drop_zero_updates: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.drop_zero_updates = drop_zero_updates
        self._global: dict[str, np.ndarray] = {}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {key: array.numpy() for key, array in arrays.items()}
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = []
        for message in replies:
            if message.has_error():
                accepted.append(message)
                continue
            message.content = self._uniform_content(message.content)
            if self.drop_zero_updates and self._is_zero_update(message):
                logger.warning("round %d: dropped the train reply of node %d: its update is all zero, "
                               "which the DP clipping cannot scale", server_round, message.metadata.src_node_id)
                continue
            accepted.append(message)

        # Flower draws the DP noise from numpy's global generator, which the ServerApp
        # seeds with --seed. Noise that anyone can replay from a known seed protects
        # nothing, so the wrapper draws from fresh OS entropy and then restores the
        # generator, leaving the rest of the run as seeded.
        seeded_state = np.random.get_state()
        np.random.seed(None)
        try:
            return self.inner.aggregate_train(server_round, accepted)
        finally:
            np.random.set_state(seeded_state)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.inner.summary()

    def _uniform_content(self, content: RecordDict) -> RecordDict:
        records = {}
        for name, record in content.items():
            if isinstance(record, MetricRecord):
                record = MetricRecord({**dict(record.items()), NUM_EXAMPLES_KEY: 1})
            elif isinstance(record, ArrayRecord) and set(record.keys()) == set(self._global):
                record = ArrayRecord({key: record[key] for key in self._global})
            records[name] = record
        return RecordDict(records)

    def _is_zero_update(self, message: Message) -> bool:
        for record in message.content.array_records.values():
            for key, array in record.items():
                if key in self._global and not np.array_equal(array.numpy(), self._global[key]):
                    return False
        return True
