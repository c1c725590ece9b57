"""Distribute the backbone to the nodes, sending the weights only to nodes that lack them.

Two steps, both `query.backbone` messages:

1. Every node gets the backbone's SHA-256 and replies whether its store has it.
2. Only the nodes that replied no get the weights; they verify the hash and store them.

After this, rounds carry only the trainable arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedgraft.models.state import array_record_nbytes, to_array_record

__all__ = ["BackboneDistribution", "distribute_backbone"]

logger = logging.getLogger(__name__)

MESSAGE_TYPE = "query.backbone"


@dataclass
class BackboneDistribution:
    """Record of the distribution step: bytes sent and which nodes got the weights."""

    sha256: str
    bytes_sent: int = 0
    bytes_received: int = 0
    nodes_cached: list[int] = field(default_factory=list)  # already held the weights
    nodes_sent: list[int] = field(default_factory=list)  # received the weights now
    nodes_failed: dict[int, str] = field(default_factory=dict)  # node id -> reason
    node_names: dict[int, str] = field(default_factory=dict)  # node id -> data it serves


def distribute_backbone(
    grid: Grid,
    node_ids: list[int],
    name: str,
    state: Mapping[str, torch.Tensor],
    sha256: str,
    timeout: float,
) -> BackboneDistribution:
    """Make sure every node in `node_ids` has the backbone `state` hashing to `sha256`."""
    report = BackboneDistribution(sha256=sha256)
    announce = ConfigRecord({"name": name, "sha256": sha256})

    # Step 1: ask which nodes already hold these weights.
    replies = _send(grid, node_ids, RecordDict({"backbone": announce}), timeout, report)
    missing = []
    for node_id in node_ids:
        reply = replies.get(node_id)
        if reply is None:
            continue
        report.node_names[node_id] = str(reply["node-name"])
        if bool(reply["has-backbone"]):
            report.nodes_cached.append(node_id)
        else:
            missing.append(node_id)

    # Step 2: send the weights to the others.
    if missing:
        weights = to_array_record(state)
        report.bytes_sent += array_record_nbytes(weights) * len(missing)
        replies = _send(grid, missing, RecordDict({"backbone": announce, "weights": weights}), timeout, report)
        for node_id in missing:
            reply = replies.get(node_id)
            if reply is not None and bool(reply["has-backbone"]):
                report.nodes_sent.append(node_id)
            elif reply is not None:
                report.nodes_failed[node_id] = "node did not store the backbone"

    logger.info(
        "backbone %s: %d nodes had it cached, %d received it (%.1f MB sent), %d failed",
        sha256[:12], len(report.nodes_cached), len(report.nodes_sent),
        report.bytes_sent / 1e6, len(report.nodes_failed),
    )
    for node_id, reason in report.nodes_failed.items():
        logger.warning("backbone distribution to node %d failed: %s", node_id, reason)
    return report


def _send(
    grid: Grid, node_ids: list[int], content: RecordDict, timeout: float, report: BackboneDistribution
) -> dict[int, ConfigRecord]:
    """Send `content` to each node; return the ConfigRecord replies by node id."""
    messages = [Message(content=content, message_type=MESSAGE_TYPE, dst_node_id=node_id) for node_id in node_ids]
    replies = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node_id = reply.metadata.src_node_id
        if reply.has_error():
            report.nodes_failed[node_id] = reply.error.reason
            continue
        replies[node_id] = reply.content["backbone"]
    for node_id in set(node_ids) - set(replies) - set(report.nodes_failed):
        report.nodes_failed[node_id] = f"no reply within {timeout:.0f} s"
    return replies
