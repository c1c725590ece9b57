"""The ServerApp: distribute the backbone, run the rounds, write the run directory."""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedgraft.config import RunConfig
from fedgraft.continual.task_heads import head_layout
from fedgraft.data.feature_cache import FeatureCache, progress_logger
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.sources import test_data
from fedgraft.log_setup import configure_logging
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.state import state_dict_sha256, to_array_record, to_state_dict
from fedgraft.models.transfer import TransferModel
from fedgraft.server.backbone_distribution import distribute_backbone
from fedgraft.server.central_evaluation import CentralEvaluator
from fedgraft.server.checkpoint import (
    CHECKPOINT_FILE,
    Checkpoint,
    load_checkpoint,
    read_resume_config,
    save_checkpoint,
)
from fedgraft.server.continual_job import run_continual_rounds
from fedgraft.server.node_order import NodeOrderedGrid, wait_for_nodes
from fedgraft.server.progress import TABLE_HEADER, format_round
from fedgraft.server.round_loop import RoundRecord, run_rounds
from fedgraft.server.run_directory import RunDirectory
from fedgraft.strategies.guarded import GuardedStrategy
from fedgraft.strategies.registry import build_strategy

__all__ = ["app", "resolve_run_dir"]

logger = logging.getLogger(__name__)

app = ServerApp()

# Called after each round with its record, the global arrays and, optionally, extra state to checkpoint.
AfterRound = Callable[..., None]


def resolve_run_dir(cfg: RunConfig) -> Path:
    """Return `cfg.resume` or `cfg.run_dir`, else a new timestamped folder under `cfg.output_dir`."""
    if cfg.resume:
        return Path(cfg.resume).expanduser().resolve()
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return (Path(cfg.output_dir).expanduser() / f"{stamp}-{cfg.strategy}").resolve()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run one federated transfer-learning job as the run config describes."""
    configure_logging()
    started = time.monotonic()
    cfg = RunConfig.from_run_config(context.run_config)
    if cfg.resume:
        # An interrupted run continues with its own settings and ignores the other run-config keys.
        cfg = read_resume_config(Path(cfg.resume))
    cfg.validate()
    run_dir = RunDirectory(resolve_run_dir(cfg), cfg)
    logger.info("run directory: %s", run_dir.path)

    # One seed drives node sampling (Flower samples with `random`) and the initial head.
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    test = test_data(cfg)
    model = build_transfer_model(cfg, num_classes=len(test.class_names))
    backbone_state = model.backbone.state_dict()
    sha256 = state_dict_sha256(backbone_state)
    initial_arrays = to_array_record(model.trainable_state_dict())

    # Every node must hold the backbone before the first round.
    node_ids = wait_for_nodes(grid, cfg.num_clients, timeout=cfg.round_timeout)
    distribution = distribute_backbone(grid, node_ids, cfg.backbone, backbone_state, sha256, cfg.round_timeout)
    ordered_grid = NodeOrderedGrid(grid, distribution.node_names)

    buffer_keys = frozenset(model.trainable_buffer_names())
    strategy = GuardedStrategy(build_strategy(cfg), buffer_keys=buffer_keys)
    checkpoint = None
    if cfg.resume:
        checkpoint = load_checkpoint(run_dir.path)
        initial_arrays = checkpoint.arrays
        strategy = GuardedStrategy(checkpoint.strategy, buffer_keys=buffer_keys)
        run_dir.rounds = list(checkpoint.rounds)
        logger.info("resuming %s after round %d from %s", run_dir.path, checkpoint.round, CHECKPOINT_FILE)

    # Round 0: the untrained head, and the cost of distributing the backbone.
    round_zero = RoundRecord(
        round=0,
        bytes_sent=distribution.bytes_sent,
        bytes_received=distribution.bytes_received,
        seconds=time.monotonic() - started,
    )
    logger.info("%s", TABLE_HEADER)
    after_round = functools.partial(_after_round, run_dir, strategy)
    if cfg.stream:
        final_arrays, extra_summary = run_continual_rounds(
            cfg, run_dir, model, sha256, ordered_grid, distribution.node_names,
            strategy, initial_arrays, round_zero, after_round, checkpoint,
        )
    else:
        final_arrays = _run_single_task(cfg, model, sha256, test, ordered_grid, strategy, initial_arrays,
                                        round_zero, after_round, checkpoint)
        extra_summary = {}

    final_state = to_state_dict(final_arrays)
    model_path = run_dir.save_model(
        final_state,
        metadata={
            "backbone": cfg.backbone,
            "backbone-sha256": sha256,
            "state-sha256": state_dict_sha256(final_state),
            "mode": cfg.mode,
            "head": cfg.head,
            "head-layout": head_layout(cfg).value,
            "class-names": ",".join(test.class_names),
        },
    )
    run_dir.save_plot()
    last = run_dir.rounds[-1]
    run_dir.set_summary(
        final_test_accuracy=last["test_accuracy"],
        final_val_accuracy=last["val_accuracy"],
        rounds=len(run_dir.rounds) - 1,
        backbone_sha256=sha256,
        backbone_nodes_cached=len(distribution.nodes_cached),
        backbone_nodes_sent=len(distribution.nodes_sent),
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
        seconds=time.monotonic() - started,
        model=str(model_path),
        **extra_summary,
    )
    logger.info("run finished: test accuracy %.4f; outputs in %s", last["test_accuracy"], run_dir.path)


def _run_single_task(
    cfg: RunConfig,
    model: TransferModel,
    sha256: str,
    test: ImageArrays,
    grid: NodeOrderedGrid,
    strategy: GuardedStrategy,
    initial_arrays: ArrayRecord,
    round_zero: RoundRecord,
    after_round: AfterRound,
    checkpoint: Checkpoint | None,
) -> ArrayRecord:
    """Run the rounds of the single-task job, testing on `test` after each; return the final arrays.

    With `checkpoint`, the run continues after the checkpoint's round instead of round 0.
    """
    logger.info("computing the frozen backbone's features for %d test images", len(test))
    features = FeatureCache(cfg.cache_dir).features_for(
        model, sha256, test, cfg.image_size, progress=progress_logger("server: test features")
    )
    evaluator = CentralEvaluator(model, features, torch.from_numpy(test.labels).long())
    if checkpoint is None:
        initial = evaluator(0, initial_arrays)
        round_zero.test_loss = float(initial["test-loss"])
        round_zero.test_accuracy = float(initial["test-accuracy"])
        after_round(round_zero, initial_arrays)
    else:
        checkpoint.restore_rng()

    round_config = ConfigRecord({"backbone-sha256": sha256})
    return run_rounds(
        strategy,
        grid,
        initial_arrays,
        num_rounds=cfg.rounds,
        train_config=round_config,
        evaluate_config=round_config,
        evaluate_fn=evaluator,
        timeout=cfg.round_timeout,
        on_round=after_round,
        first_round=1 if checkpoint is None else checkpoint.round + 1,
    )


def _after_round(
    run_dir: RunDirectory,
    strategy: GuardedStrategy,
    record: RoundRecord,
    arrays: ArrayRecord,
    extra: dict | None = None,
) -> None:
    """Record and print one round, then write the checkpoint to continue after it."""
    _report(run_dir, record)
    save_checkpoint(run_dir.path, record.round, arrays, strategy.inner, run_dir.rounds, extra)


def _report(run_dir: RunDirectory, record: RoundRecord) -> None:
    run_dir.record_round(record)
    logger.info("%s", format_round(record))
    for rejected in record.rejected:
        logger.info("      round %d rejected node %s: %s", record.round, rejected["node"], rejected["reason"])
