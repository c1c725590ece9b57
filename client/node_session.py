"""What a node keeps in memory between rounds of one run: its model and cached features.

In simulation each ClientApp runs in a long-lived worker, so a session built in round 1
serves every later round. A fresh process rebuilds it from the node's backbone store and
the on-disk feature cache, which costs a file read, not a backbone pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedgraft.client.backbone_store import BackboneStore
from fedgraft.config import RunConfig
from fedgraft.data.feature_cache import FeatureCache
from fedgraft.data.fashion_mnist import FASHION_MNIST_CLASSES
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.node_data import load_node_data
from fedgraft.data.partition import split_client
from fedgraft.data.sources import client_data
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.transfer import TransferModel

__all__ = ["NodeSession", "open_session"]

logger = logging.getLogger(__name__)

_SESSIONS: dict[tuple, NodeSession] = {}


@dataclass
class NodeSession:
    """A node's model and the frozen-part outputs of its train and validation data."""

    model: TransferModel
    train_features: torch.Tensor
    train_labels: torch.Tensor
    val_features: torch.Tensor
    val_labels: torch.Tensor
    seed_offset: int  # distinguishes the nodes' shuffling streams


def open_session(
    run_id: int,
    cfg: RunConfig,
    node_config: dict[str, Any],
    store: BackboneStore,
    backbone_sha256: str,
) -> NodeSession:
    """Return the node's session for this run, building it on first use."""
    key = (run_id, backbone_sha256, tuple(sorted(node_config.items())))
    if key not in _SESSIONS:
        # One run at a time per worker: drop sessions of earlier runs to free memory.
        _SESSIONS.clear()
        _SESSIONS[key] = _build_session(cfg, node_config, store, backbone_sha256)
    return _SESSIONS[key]


def _build_session(
    cfg: RunConfig, node_config: dict[str, Any], store: BackboneStore, backbone_sha256: str
) -> NodeSession:
    train, val, seed_offset = _node_data(cfg, node_config)

    model = build_transfer_model(cfg, num_classes=len(train.class_names), weights="random")
    model.backbone.load_state_dict(store.load(backbone_sha256))

    cache = FeatureCache(node_config.get("cache-dir", cfg.cache_dir))
    train_features = cache.features_for(model, backbone_sha256, train, cfg.image_size)
    val_features = cache.features_for(model, backbone_sha256, val, cfg.image_size)
    logger.info(
        "node session ready: %d train and %d validation examples (feature cache: %d hits, %d misses)",
        len(train), len(val), cache.hits, cache.misses,
    )
    return NodeSession(
        model=model,
        train_features=train_features,
        train_labels=torch.from_numpy(train.labels).long(),
        val_features=val_features,
        val_labels=torch.from_numpy(val.labels).long(),
        seed_offset=seed_offset,
    )


def _node_data(cfg: RunConfig, node_config: dict[str, Any]) -> tuple[ImageArrays, ImageArrays, int]:
    """Return (train, validation, seed offset) for this node.

    A node with `data-path` in its node config uses its own files; otherwise it takes
    partition `partition-id` of the default data, as in simulation.
    """
    if "data-path" in node_config:
        # NOTE: node data uses the Fashion-MNIST label map until runs carry their own.
        data = load_node_data(str(node_config["data-path"]), FASHION_MNIST_CLASSES)
        split = split_client(np.arange(len(data)), cfg.val_fraction, cfg.max_samples_per_client or None, cfg.seed)
        seed_offset = sum(str(node_config["data-path"]).encode()) % 100_003
        return data.subset(split.train), data.subset(split.val), seed_offset
    partition_id = int(node_config.get("partition-id", 0))
    train, val = client_data(cfg, partition_id)
    return train, val, partition_id
