"""The data of a federated continual run: each task's training split spread over the nodes.

Every process builds the same stream from the run config, so the server and the nodes
agree on the tasks without sending data. Each task's training images are partitioned
across the nodes with the federated job's partitioner (iid, Dirichlet or shards), with a
seed derived from the run seed and the task index. `max-samples-per-client` caps a node's
images per task. The server tests on each task's test split, cut to
`test-samples // num-tasks` images per task with the continual module's `balanced_subset`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from fedgraft.config import RunConfig
from fedgraft.continual.experiment import balanced_subset
from fedgraft.continual.federated_config import FederatedContinualPlan
from fedgraft.continual.streams import Experience, create_stream
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.partition import partition_dataset

__all__ = ["NodeTask", "federated_stream", "node_tasks", "task_test_sets"]


@dataclass(frozen=True)
class NodeTask:
    """One node's share of one task: its training and validation images."""

    index: int
    task_label: int
    train: ImageArrays
    val: ImageArrays


@functools.lru_cache(maxsize=2)
def _stream(stream: str, num_tasks: int, seed: int, data_dir: str) -> tuple[Experience, ...]:
    return tuple(create_stream(stream, num_tasks=num_tasks, seed=seed, data_dir=data_dir))


def federated_stream(cfg: RunConfig, plan: FederatedContinualPlan) -> tuple[Experience, ...]:
    """Return the run's stream, built once per process."""
    return _stream(cfg.stream, plan.num_tasks, cfg.seed, cfg.data_dir)


def node_tasks(cfg: RunConfig, plan: FederatedContinualPlan, partition_id: int) -> list[NodeTask]:
    """Return node `partition_id`'s share of every task, in task order; a share may be empty."""
    if not 0 <= partition_id < cfg.num_clients:
        raise ValueError(f"partition-id is {partition_id}, expected 0 to {cfg.num_clients - 1}")
    shares = []
    for experience in federated_stream(cfg, plan):
        splits = partition_dataset(
            experience.train.labels,
            cfg.num_clients,
            cfg.partition,
            alpha=cfg.alpha,
            classes_per_client=min(cfg.classes_per_client, len(experience.classes)),
            max_samples=cfg.max_samples_per_client or None,
            val_fraction=cfg.val_fraction,
            seed=int(np.random.SeedSequence([cfg.seed, experience.index]).generate_state(1)[0]),
        )
        split = splits[partition_id]
        shares.append(
            NodeTask(
                index=experience.index,
                task_label=experience.task_label,
                train=experience.train.subset(split.train),
                val=experience.train.subset(split.val),
            )
        )
    return shares


def task_test_sets(cfg: RunConfig, plan: FederatedContinualPlan) -> list[ImageArrays]:
    """Return the server's test images of every task, in task order."""
    per_task = cfg.test_samples // plan.num_tasks if cfg.test_samples else 0
    generator = np.random.default_rng(cfg.seed)
    tests = []
    for experience in federated_stream(cfg, plan):
        test = experience.test
        if per_task:
            test = test.subset(balanced_subset(test.labels, per_task, generator))
        tests.append(test)
    return tests
