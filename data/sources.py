"""Data sources of a run: the default Fashion-MNIST, split into client partitions."""

from __future__ import annotations

import functools

import numpy as np

from fedgraft.config import RunConfig
from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.partition import ClientSplit, partition_dataset

__all__ = ["client_partitions", "client_data", "test_data", "training_data"]


@functools.lru_cache(maxsize=2)
def training_data(data_dir: str) -> ImageArrays:
    return load_fashion_mnist("train", data_dir)


def client_partitions(cfg: RunConfig) -> list[ClientSplit]:
    """Split the training data across `cfg.num_clients` clients, as every node computes it."""
    labels = training_data(cfg.data_dir).labels
    return partition_dataset(
        labels,
        cfg.num_clients,
        cfg.partition,
        alpha=cfg.alpha,
        classes_per_client=cfg.classes_per_client,
        max_samples=cfg.max_samples_per_client or None,
        val_fraction=cfg.val_fraction,
        seed=cfg.seed,
    )


def client_data(cfg: RunConfig, partition_id: int) -> tuple[ImageArrays, ImageArrays]:
    """Return the (train, validation) data of client `partition_id`."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id is {partition_id}, expected 0 to {cfg.num_clients - 1}")
    split = client_partitions(cfg)[partition_id]
    data = training_data(cfg.data_dir)
    return data.subset(split.train), data.subset(split.val)


def test_data(cfg: RunConfig) -> ImageArrays:
    """Return the server's held-out test data: a seeded stratified subset of the test split."""
    data = load_fashion_mnist("test", cfg.data_dir)
    if cfg.test_samples == 0 or cfg.test_samples >= len(data):
        return data
    rng = np.random.default_rng(cfg.seed)
    classes = np.unique(data.labels)
    per_class = cfg.test_samples // len(classes)
    chosen = [rng.permutation(np.flatnonzero(data.labels == c))[:per_class] for c in classes]
    indices = np.sort(np.concatenate(chosen))
    return data.subset(indices)
