"""A node in a federated continual run: its share of each task and its continual strategy.

In each round the node trains the global head on the task the schedule gives it, with the
Avalanche strategy named by `cl-strategy`. The strategy is built anew every round, so the
optimizer starts fresh as in the single-task job, and its plugins' state comes from the
node's `ContinualStateStore` on disk. A node restarted with the same `state-dir` therefore
continues with its replay buffer, EWC importances and LwF teacher intact.

Training uses the frozen part's output, read from the node's feature cache, so every
strategy trains the `FeatureHead` of the transfer model and latent replay stores features.
On a task-incremental stream the model has one head per task (`TaskHeads`), and training,
replay and validation route each sample through the head of its task label.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks import CLScenario

from fedgraft.client.backbone_store import BackboneStore
from fedgraft.client.continual_state import ContinualStateStore
from fedgraft.config import RunConfig
from fedgraft.continual.avalanche_adapter import benchmark_from_tensors
from fedgraft.continual.avalanche_warnings import hide_avalanche_deprecations
from fedgraft.continual.federated_config import FederatedContinualPlan, plan_continual_run
from fedgraft.continual.federated_data import federated_stream, node_tasks
from fedgraft.continual.strategies import create_strategy
from fedgraft.continual.task_heads import evaluate_task, feature_head_for, fit_heads_to_stream
from fedgraft.data.feature_cache import FeatureCache
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.transfer import TransferModel

__all__ = ["ContinualNode", "TaskFeatures", "open_continual_node", "state_root"]

logger = logging.getLogger(__name__)

_NODES: dict[tuple, ContinualNode] = {}


@dataclass
class TaskFeatures:
    """A node's frozen-part outputs and labels for one task."""

    train_inputs: torch.Tensor
    train_labels: torch.Tensor
    val_inputs: torch.Tensor
    val_labels: torch.Tensor
    task_label: int = 0


@dataclass
class ContinualNode:
    """One node's model, task data and state folder for one run."""

    cfg: RunConfig
    plan: FederatedContinualPlan
    partition_id: int
    model: TransferModel
    tasks: list[TaskFeatures]
    # Experience k of train_stream is this node's share of task k. Experience k of
    # test_stream is the node's validation split of task k.
    benchmark: CLScenario
    state_dir: Path

    def store(self, run_key: str) -> ContinualStateStore:
        return ContinualStateStore(self.state_dir / run_key, self.cfg.cl_strategy)

    def task_in_round(self, server_round: int) -> int | None:
        schedule = self.plan.schedule
        return schedule.task_of(server_round, schedule.lag_of(self.partition_id))

    def train_round(self, server_round: int, run_key: str) -> dict[str, float | int]:
        """Train the loaded global head on this round's task; return the reply metrics.

        A node that has not arrived yet, or has no images of its task, trains nothing and
        reports 0 examples, so the server leaves its reply out of the average.
        """
        task = self.task_in_round(server_round)
        metrics: dict[str, float | int] = {
            "num-examples": 0, "train-loss": 0.0, "train-accuracy": 0.0,
            "task-index": -1 if task is None else task, "buffer-samples": 0,
        }
        if task is None or len(self.tasks[task].train_labels) == 0:
            return metrics

        settings = self.plan.continual.settings_for(self.cfg.cl_strategy)
        # Every task up to this one has trained on this node, so LwF distils each of their heads.
        network = feature_head_for(self.model, known_tasks=range(task + 1))
        strategy = create_strategy(self.cfg.cl_strategy, network, settings)
        store = self.store(run_key)
        store.restore(before_task=task, strategy=strategy)

        # Seeded by run, round and node, so that the same seed repeats the run exactly.
        seed = self.cfg.seed * 1_000_003 + server_round * 1009 + self.partition_id
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        with hide_avalanche_deprecations():
            strategy.train(self.benchmark.train_stream[task], eval_streams=[])
        store.save(task, strategy)

        data = self.tasks[task]
        result = evaluate_task(self.model, data.train_inputs, data.train_labels, data.task_label)
        metrics.update({
            "num-examples": result.num_examples,
            "train-loss": result.loss,
            "train-accuracy": result.accuracy,
            "buffer-samples": _buffer_samples(strategy),
        })
        return metrics

    def evaluate_round(self) -> dict[str, float | int]:
        """Return loss and accuracy of the loaded head on the validation split of every task."""
        metrics: dict[str, float | int] = {}
        examples, loss_sum, correct = 0, 0.0, 0.0
        for index, data in enumerate(self.tasks):
            result = evaluate_task(self.model, data.val_inputs, data.val_labels, data.task_label)
            metrics[f"val-accuracy-task-{index}"] = result.accuracy
            metrics[f"val-examples-task-{index}"] = result.num_examples
            examples += result.num_examples
            loss_sum += result.loss * result.num_examples
            correct += result.accuracy * result.num_examples
        metrics["num-examples"] = examples
        metrics["val-loss"] = loss_sum / examples if examples else 0.0
        metrics["val-accuracy"] = correct / examples if examples else 0.0
        return metrics


def _buffer_samples(strategy: Any) -> int:
    """Return the number of samples in the strategy's replay buffer, 0 without one."""
    for plugin in strategy.plugins:
        policy = getattr(plugin, "storage_policy", None)
        if policy is not None:
            return len(policy.buffer)
    return 0


def state_root(cfg: RunConfig, node_config: dict[str, Any], partition_id: int) -> Path:
    """Return the node's state folder: `state-dir` from the node config, else one under the cache."""
    if "state-dir" in node_config:
        return Path(str(node_config["state-dir"])).expanduser()
    cache_dir = Path(str(node_config.get("cache-dir", cfg.cache_dir))).expanduser()
    return cache_dir / "continual-state" / f"partition-{partition_id}"


def open_continual_node(
    run_id: int,
    cfg: RunConfig,
    node_config: dict[str, Any],
    backbones: BackboneStore,
    backbone_sha256: str,
) -> ContinualNode:
    """Return this node's ContinualNode for the run, building it on first use in this process."""
    key = (run_id, backbone_sha256, tuple(sorted(node_config.items())))
    if key not in _NODES:
        _NODES.clear()
        _NODES[key] = _build_node(cfg, node_config, backbones, backbone_sha256)
    return _NODES[key]


def _build_node(
    cfg: RunConfig, node_config: dict[str, Any], backbones: BackboneStore, backbone_sha256: str
) -> ContinualNode:
    if "data-path" in node_config:
        # TODO: per-task node data from files; a continual node reads its partition of the stream.
        raise ValueError(
            "a federated continual run reads each node's share of the stream by partition-id, "
            f"but this node's config sets data-path={node_config['data-path']!r}. Start the node "
            "with --node-config 'partition-id=N' for a continual run."
        )
    plan = plan_continual_run(cfg)
    partition_id = int(node_config.get("partition-id", 0))
    shares = node_tasks(cfg, plan, partition_id)

    model = build_transfer_model(cfg, num_classes=len(shares[0].train.class_names), weights="random")
    model.backbone.load_state_dict(backbones.load(backbone_sha256))
    fit_heads_to_stream(model, federated_stream(cfg, plan))
    cache = FeatureCache(node_config.get("cache-dir", cfg.cache_dir))
    tasks = []
    for share in shares:
        tasks.append(TaskFeatures(
            train_inputs=cache.features_for(model, backbone_sha256, share.train, cfg.image_size),
            train_labels=torch.from_numpy(share.train.labels).long(),
            val_inputs=cache.features_for(model, backbone_sha256, share.val, cfg.image_size),
            val_labels=torch.from_numpy(share.val.labels).long(),
            task_label=share.task_label,
        ))
    benchmark = benchmark_from_tensors(
        [(t.train_inputs, t.train_labels) for t in tasks],
        [(t.val_inputs, t.val_labels) for t in tasks],
        [share.task_label for share in shares],
    )
    logger.info(
        "node partition %d: %s training images per task (feature cache: %d hits, %d misses)",
        partition_id, [len(t.train_labels) for t in tasks], cache.hits, cache.misses,
    )
    return ContinualNode(
        cfg=cfg, plan=plan, partition_id=partition_id, model=model, tasks=tasks,
        benchmark=benchmark, state_dir=state_root(cfg, node_config, partition_id),
    )
