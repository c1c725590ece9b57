"""A node's in-memory state between rounds of one run: its model and cached features.

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
from fedgraft.client.training import Encoder
from fedgraft.config import RunConfig
from fedgraft.data.feature_cache import FeatureCache, progress_logger
from fedgraft.data.fashion_mnist import FASHION_MNIST_CLASSES
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.node_data import load_node_data
from fedgraft.data.partition import split_client
from fedgraft.data.sources import client_data
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.preprocess import preprocess_images
from fedgraft.models.transfer import TransferModel

__all__ = ["NodeSession", "open_session"]

logger = logging.getLogger(__name__)

_SESSIONS: dict[tuple, NodeSession] = {}


@dataclass
class NodeSession:
    """A node's model and the inputs its trainable part learns from.

    With the feature cache on, `train_inputs` and `val_inputs` are frozen-part outputs
    and `encode` is None. With it off they are the raw uint8 images, and `encode` runs
    preprocessing and the frozen part on every batch of every epoch.
    """

    model: TransferModel
    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    val_inputs: torch.Tensor
    val_labels: torch.Tensor
    seed_offset: int  # distinguishes the nodes' shuffling streams
    encode: Encoder | None = None


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

    labels = {"train_labels": torch.from_numpy(train.labels).long(), "val_labels": torch.from_numpy(val.labels).long()}
    if not cfg.cache_features:
        logger.info("node session ready: %d train and %d validation examples, feature cache off", len(train), len(val))
        return NodeSession(
            model=model,
            train_inputs=torch.from_numpy(train.images),
            val_inputs=torch.from_numpy(val.images),
            seed_offset=seed_offset,
            encode=_frozen_encoder(model, cfg.image_size),
            **labels,
        )

    cache = FeatureCache(node_config.get("cache-dir", cfg.cache_dir))
    name = _node_label(node_config)
    train_features = cache.features_for(
        model, backbone_sha256, train, cfg.image_size, progress=progress_logger(f"{name}: train features")
    )
    val_features = cache.features_for(
        model, backbone_sha256, val, cfg.image_size, progress=progress_logger(f"{name}: validation features")
    )
    logger.info(
        "%s: %d train and %d validation examples (feature cache: %d hits, %d misses)",
        name, len(train), len(val), cache.hits, cache.misses,
    )
    return NodeSession(
        model=model, train_inputs=train_features, val_inputs=val_features, seed_offset=seed_offset, **labels
    )


def _frozen_encoder(model: TransferModel, image_size: int) -> Encoder:
    """Return a function that preprocesses uint8 images and runs the frozen part on them."""
    mean, std = model.backbone.input_mean, model.backbone.input_std

    def encode(images: torch.Tensor) -> torch.Tensor:
        return model.frozen_features(preprocess_images(images.numpy(), image_size, mean, std))

    return encode


def _node_label(node_config: dict[str, Any]) -> str:
    if "data-path" in node_config:
        return f"node {node_config['data-path']}"
    return f"node partition {node_config.get('partition-id', 0)}"


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
