"""Build Flower messages for unit tests of strategies, without a running SuperLink."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({key: Array(np.asarray(value)) for key, value in arrays.items()})


def train_reply(node_id: int, arrays: dict[str, np.ndarray], num_examples: int, **metrics: float) -> Message:
    """Return a train reply from `node_id` carrying `arrays` and `num-examples`."""
    content = RecordDict({
        "arrays": array_record(arrays),
        "metrics": MetricRecord({"num-examples": num_examples, **metrics}),
    })
    return Message(content=content, metadata=_metadata(node_id, "train"))


def evaluate_reply(node_id: int, num_examples: int, **metrics: float) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": num_examples, **metrics})})
    return Message(content=content, metadata=_metadata(node_id, "evaluate"))


def _metadata(node_id: int, message_type: str) -> Metadata:
    return Metadata(
        run_id=1,
        message_id=f"reply-{node_id}",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id=f"instruction-{node_id}",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=message_type,
    )


class StaticGrid:
    """A Grid stand-in for `configure_train`: it only lists a fixed set of node ids."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)
