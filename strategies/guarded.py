"""A wrapper that puts fedgraft's aggregation guards around any Flower strategy.

The guards, in the order they run on each round's train replies:

1. A reply that carries an error, or arrays whose keys, shapes or dtypes differ from the
   global model's, is dropped and logged with its node id.
2. A reply with a NaN or Inf value is dropped and logged with its node id.
3. A reply that reports 0 examples is dropped and logged: it carries no information.
   When no reply is left, the previous global model is kept and the reason is logged.
4. BatchNorm buffers and integer counters (`running_mean`, `running_var`,
   `num_batches_tracked`) never reach the wrapped strategy, so server-side optimisers
   such as FedAdam only ever move real parameters. The wrapper averages float buffers by
   sample count itself and keeps integer counters integer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedgraft.models.state import ParameterMismatchError, check_arrays_match

__all__ = ["GuardedStrategy", "RejectedReply", "NUM_EXAMPLES_KEY"]

logger = logging.getLogger(__name__)

# Flower's strategies weight replies by this MetricRecord key.
NUM_EXAMPLES_KEY = "num-examples"
ARRAYS_KEY = "arrays"


@dataclass(frozen=True)
class RejectedReply:
    """A node's train reply that the guards dropped, and why."""

    node_id: int
    reason: str


@dataclass
class GuardedStrategy(Strategy):
    """Run `inner` behind the guards listed in this module's docstring.

    `buffer_keys` names the arrays that are buffers rather than trainable parameters.
    """

    inner: Strategy
    buffer_keys: frozenset[str] = frozenset()
    rejected: list[RejectedReply] = field(default_factory=list)  # of the latest train round
    _global: dict[str, np.ndarray] = field(default_factory=dict)

    # --- training ----------------------------------------------------------------------
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = {key: array.numpy() for key, array in arrays.items()}
        parameters, buffers = self._split(arrays)
        messages = list(self.inner.configure_train(server_round, parameters, config, grid))
        return [self._with_buffers(message, buffers) for message in messages]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = self._accepted_train_replies(list(replies))
        if not accepted:
            logger.warning(
                "round %d: no usable train reply (%d rejected); keeping the previous global model",
                server_round, len(self.rejected),
            )
            return None, None

        weights = np.array([_num_examples(message) for message in accepted], dtype=np.float64)
        buffers = self._average_buffers(accepted, weights / weights.sum())

        # The wrapped strategy gets copies without buffers, because some Flower strategies
        # pop arrays out of the replies they aggregate.
        stripped = [self._without_buffers(message) for message in accepted]
        parameters, metrics = self.inner.aggregate_train(server_round, stripped)
        if parameters is None:
            logger.warning("round %d: %s returned no arrays; keeping the previous global model",
                           server_round, type(self.inner).__name__)
            return None, metrics
        for key, value in buffers.items():
            parameters[key] = Array(value)
        return parameters, metrics

    def _accepted_train_replies(self, replies: list[Message]) -> list[Message]:
        self.rejected = []
        accepted = []
        for message in replies:
            reason = self._rejection_reason(message)
            if reason is None:
                accepted.append(message)
                continue
            node_id = message.metadata.src_node_id
            self.rejected.append(RejectedReply(node_id, reason))
            logger.warning("rejected the train reply of node %d: %s", node_id, reason)
        return accepted

    def _rejection_reason(self, message: Message) -> str | None:
        if message.has_error():
            return f"node reported an error: {message.error.reason}"
        content = message.content
        if len(content.array_records) != 1 or len(content.metric_records) != 1:
            return "expected exactly one ArrayRecord and one MetricRecord"
        metrics = next(iter(content.metric_records.values()))
        if NUM_EXAMPLES_KEY not in metrics:
            return f"MetricRecord lacks {NUM_EXAMPLES_KEY!r}"
        arrays = {key: array.numpy() for key, array in next(iter(content.array_records.values())).items()}
        try:
            check_arrays_match(arrays, self._global)
        except ParameterMismatchError as err:
            return str(err)
        for key, value in arrays.items():
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                return f"parameter {key!r} contains NaN or Inf"
        if _num_examples(message) <= 0:
            return "reported 0 training examples"
        return None

    # --- evaluation --------------------------------------------------------------------
    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        parameters, buffers = self._split(arrays)
        messages = list(self.inner.configure_evaluate(server_round, parameters, config, grid))
        return [self._with_buffers(message, buffers) for message in messages]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        usable = []
        for message in replies:
            if message.has_error():
                logger.warning("evaluate reply of node %d carries an error: %s",
                               message.metadata.src_node_id, message.error.reason)
            elif _num_examples(message) > 0:
                usable.append(message)
        if not usable:
            logger.warning("round %d: no node evaluated any example; no federated evaluation", server_round)
            return None
        return self.inner.aggregate_evaluate(server_round, usable)

    def summary(self) -> None:
        self.inner.summary()

    # --- helpers -----------------------------------------------------------------------
    def _split(self, arrays: ArrayRecord) -> tuple[ArrayRecord, ArrayRecord]:
        parameters = ArrayRecord({k: v for k, v in arrays.items() if k not in self.buffer_keys})
        buffers = ArrayRecord({k: v for k, v in arrays.items() if k in self.buffer_keys})
        return parameters, buffers

    def _with_buffers(self, message: Message, buffers: ArrayRecord) -> Message:
        if not buffers:
            return message
        content = message.content
        key = next(iter(content.array_records))
        merged = ArrayRecord({**dict(content[key].items()), **dict(buffers.items())})
        message.content = RecordDict({**dict(content.items()), key: merged})
        return message

    def _without_buffers(self, message: Message) -> Message:
        content = message.content
        copied = {}
        for name, record in content.items():
            if isinstance(record, ArrayRecord):
                record = ArrayRecord({k: v for k, v in record.items() if k not in self.buffer_keys})
            copied[name] = record
        message.content = RecordDict(copied)
        return message

    def _average_buffers(self, accepted: list[Message], weights: np.ndarray) -> dict[str, np.ndarray]:
        averaged = {}
        for key in sorted(self.buffer_keys & set(self._global)):
            stacked = np.stack([_arrays(message)[key].numpy() for message in accepted])
            mean = np.tensordot(weights, stacked.astype(np.float64), axes=1)
            dtype = self._global[key].dtype
            if np.issubdtype(dtype, np.integer):
                mean = np.rint(mean)
            averaged[key] = np.asarray(mean, dtype=dtype)
        return averaged


def _arrays(message: Message) -> ArrayRecord:
    return next(iter(message.content.array_records.values()))


def _num_examples(message: Message) -> float:
    metrics = next(iter(message.content.metric_records.values()))
    return float(metrics.get(NUM_EXAMPLES_KEY, 0))
