"""The federated round loop: train, aggregate, evaluate, and record what each round cost.

It follows the loop of Flower's `Strategy.start` and adds what that loop does not keep:
bytes sent and received per round and the replies the guards rejected. A callback after
each round lets the caller print a row and write metrics as the run goes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid

from fedgraft.models.state import array_record_nbytes
from fedgraft.strategies.guarded import GuardedStrategy

__all__ = ["RoundRecord", "run_rounds", "message_nbytes"]

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[int, ArrayRecord], MetricRecord | None]


@dataclass
class RoundRecord:
    """Metrics and costs of one round; round 0 is the initial model and the backbone transfer."""

    round: int
    train_loss: float | None = None
    train_accuracy: float | None = None
    val_loss: float | None = None
    val_accuracy: float | None = None
    test_loss: float | None = None
    test_accuracy: float | None = None
    nodes_trained: int = 0
    bytes_sent: int = 0  # all arrays the server sent this round, train and evaluate
    bytes_received: int = 0
    train_bytes_sent_per_node: int = 0
    train_bytes_received_per_node: int = 0
    rejected: list[dict] = field(default_factory=list)  # {"node": id, "reason": text}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def message_nbytes(messages: Iterable[Message]) -> int:
    """Return the bytes of all ArrayRecords in `messages` (arrays only, not metadata)."""
    total = 0
    for message in messages:
        if message.has_content():
            total += sum(array_record_nbytes(record) for record in message.content.array_records.values())
    return total


def run_rounds(
    strategy: GuardedStrategy,
    grid: Grid,
    arrays: ArrayRecord,
    num_rounds: int,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    evaluate_fn: EvaluateFn | None,
    timeout: float,
    on_round: Callable[[RoundRecord, ArrayRecord], None],
    on_evaluate_replies: Callable[[int, list[Message]], None] | None = None,
    first_round: int = 1,
) -> ArrayRecord:
    """Run rounds `first_round`..`num_rounds` from `arrays`; return the final global arrays.

    `on_evaluate_replies` receives each round's evaluate replies, sorted as the grid
    returns them, before `on_round` is called for that round.
    """
    for server_round in range(first_round, num_rounds + 1):
        started = time.monotonic()
        record = RoundRecord(round=server_round)

        # Train on the sampled nodes and aggregate what the guards accept.
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        record.bytes_sent += message_nbytes(messages)
        record.bytes_received += message_nbytes(replies)
        if messages:
            record.train_bytes_sent_per_node = message_nbytes(messages) // len(messages)
        if replies:
            record.train_bytes_received_per_node = message_nbytes(replies) // len(replies)
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        record.rejected = [{"node": r.node_id, "reason": r.reason} for r in strategy.rejected]
        record.nodes_trained = len(replies) - len(strategy.rejected)
        if len(replies) < len(messages):
            logger.warning("round %d: %d of %d nodes did not reply within %.0f s",
                           server_round, len(messages) - len(replies), len(messages), timeout)
        if new_arrays is not None:
            arrays = new_arrays
        if train_metrics is not None:
            record.train_loss = _metric(train_metrics, "train-loss")
            record.train_accuracy = _metric(train_metrics, "train-accuracy")

        # Federated evaluation on the nodes' validation splits, weighted by their sizes.
        messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(dict(evaluate_config)), grid))
        replies = list(grid.send_and_receive(messages, timeout=timeout)) if messages else []
        record.bytes_sent += message_nbytes(messages)
        record.bytes_received += message_nbytes(replies)
        if on_evaluate_replies is not None:
            on_evaluate_replies(server_round, replies)
        evaluate_metrics = strategy.aggregate_evaluate(server_round, replies)
        if evaluate_metrics is not None:
            record.val_loss = _metric(evaluate_metrics, "val-loss")
            record.val_accuracy = _metric(evaluate_metrics, "val-accuracy")

        # Centralized evaluation on the server's test data.
        if evaluate_fn is not None:
            test_metrics = evaluate_fn(server_round, arrays)
            if test_metrics is not None:
                record.test_loss = _metric(test_metrics, "test-loss")
                record.test_accuracy = _metric(test_metrics, "test-accuracy")

        record.seconds = time.monotonic() - started
        on_round(record, arrays)
    return arrays


def _metric(metrics: MetricRecord, key: str) -> float | None:
    value = metrics.get(key)
    return None if value is None else float(value)
