"""The server side of a federated continual run: rounds over a task stream, then the metrics.

The federation runs the single-task job's round loop for `TaskSchedule.total_rounds`
rounds with the same strategy and guards. The nodes know from the round number and the run
config which task they train on. The server adds the per-task evaluation of
`ContinualRecorder` and, at the end, writes the continual module's outputs for the
federation's accuracy matrix.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid

from fedgraft.config import RunConfig
from fedgraft.continual.experiment import ContinualResult
from fedgraft.continual.federated_config import plan_continual_run
from fedgraft.continual.federated_data import federated_stream, task_test_sets
from fedgraft.continual.metrics import summarize
from fedgraft.continual.outputs import write_run_directory
from fedgraft.continual.run_config import InputKind
from fedgraft.continual.task_heads import fit_heads_to_stream, head_layout
from fedgraft.data.feature_cache import FeatureCache, progress_logger
from fedgraft.models.transfer import TransferModel
from fedgraft.server.checkpoint import Checkpoint
from fedgraft.server.continual_record import ContinualRecorder, TaskEvaluator
from fedgraft.server.round_loop import RoundRecord, run_rounds
from fedgraft.server.run_directory import RunDirectory
from fedgraft.strategies.guarded import GuardedStrategy

__all__ = ["continual_run_key", "run_continual_rounds"]

logger = logging.getLogger(__name__)


def continual_run_key(cfg: RunConfig, run_dir: RunDirectory) -> str:
    """Return the name of the nodes' state folder for this run: stable for one run directory."""
    text = f"{run_dir.path}|{cfg.stream}|{cfg.cl_strategy}|{cfg.seed}"
    return "run-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def run_continual_rounds(
    cfg: RunConfig,
    run_dir: RunDirectory,
    model: TransferModel,
    backbone_sha256: str,
    grid: Grid,
    node_names: dict[int, str],
    strategy: GuardedStrategy,
    initial_arrays: ArrayRecord,
    round_zero: RoundRecord,
    after_round: Callable[..., None],
    checkpoint: Checkpoint | None = None,
) -> tuple[ArrayRecord, dict]:
    """Run every round of the stream; return the final arrays and the summary's continual entries.

    `after_round(record, arrays, extra)` records and checkpoints each round. With
    `checkpoint`, the run continues after the checkpoint's round with the recorder's state.
    """
    plan = plan_continual_run(cfg)
    schedule = plan.schedule
    experiences = federated_stream(cfg, plan)
    # The nodes restrict their heads the same way, from the same stream.
    fit_heads_to_stream(model, experiences)
    layout = head_layout(cfg)
    logger.info(
        "continual run: %s, %d tasks, %d rounds per task, lags %s, %d rounds, node strategy %s, %s heads",
        cfg.stream, schedule.num_tasks, schedule.rounds_per_task, list(schedule.lags),
        schedule.total_rounds, cfg.cl_strategy, layout.value,
    )

    started = time.monotonic()
    tests = task_test_sets(cfg, plan)
    cache = FeatureCache(cfg.cache_dir)
    features = [
        cache.features_for(model, backbone_sha256, test, cfg.image_size,
                           progress=progress_logger(f"server: test features of task {index}"))
        for index, test in enumerate(tests)
    ]
    evaluator = TaskEvaluator(model, features, [torch.from_numpy(t.labels).long() for t in tests], schedule)
    benchmark_seconds = time.monotonic() - started

    recorder = ContinualRecorder(run_dir.path, schedule, node_names)
    if checkpoint is None:
        initial = evaluator(0, initial_arrays)
        recorder.record_baseline(evaluator.latest)
        round_zero.test_loss = float(initial["test-loss"])
        round_zero.test_accuracy = float(initial["test-accuracy"])
        after_round(round_zero, initial_arrays, {"continual": recorder.state()})
    else:
        recorder.restore(checkpoint.extra["continual"])
        checkpoint.restore_rng()

    def on_round(record: RoundRecord, arrays: ArrayRecord) -> None:
        finished = recorder.record_round(record.round, evaluator.latest)
        after_round(record, arrays, {"continual": recorder.state()})
        if finished is not None:
            row = ", ".join(f"{value:.3f}" for value in evaluator.latest)
            logger.info("task %d ended in round %d: test accuracy per task [%s]", finished, record.round, row)

    round_config = ConfigRecord({
        "backbone-sha256": backbone_sha256,
        "continual-run": continual_run_key(cfg, run_dir),
    })
    stream_started = time.monotonic()
    final_arrays = run_rounds(
        strategy,
        grid,
        initial_arrays,
        num_rounds=schedule.total_rounds,
        train_config=round_config,
        evaluate_config=round_config,
        evaluate_fn=evaluator,
        timeout=cfg.round_timeout,
        on_round=on_round,
        on_evaluate_replies=recorder.record_node_replies,
        first_round=1 if checkpoint is None else checkpoint.round + 1,
    )

    matrix = recorder.matrix()
    result = ContinualResult(
        strategy=cfg.cl_strategy,
        input_kind=InputKind.FEATURES,
        matrix=matrix,
        baseline=torch.tensor(recorder.baseline).numpy(),
        summary=summarize(matrix, recorder.baseline),
        task_descriptions=tuple(experience.description for experience in experiences),
        stream_seconds=time.monotonic() - stream_started,
        benchmark_seconds=benchmark_seconds,
    )
    write_run_directory(result, plan.continual, run_dir.path)
    recorder.save_curves_plot()
    nodes = recorder.write_node_forgetting()
    rounds = run_dir.rounds[1:]
    summary = {
        "continual": {
            **result.summary.to_dict(),
            "stream": cfg.stream,
            "num_tasks": schedule.num_tasks,
            "rounds_per_task": schedule.rounds_per_task,
            "task_lags": list(schedule.lags),
            "cl_strategy": cfg.cl_strategy,
            # "shared": one head for every task; "per-task": head j for task label j.
            "head_layout": layout.value,
            "final_accuracy_per_task": matrix[-1].tolist(),
            "node_average_forgetting": {name: entry["average_forgetting"] for name, entry in nodes.items()},
            "mean_bytes_per_round": sum(r["bytes_sent"] + r["bytes_received"] for r in rounds) / max(len(rounds), 1),
        },
    }
    logger.info(
        "continual run finished: average accuracy %.4f, forgetting %s, BWT %s",
        result.summary.average_accuracy,
        _number(result.summary.average_forgetting),
        _number(result.summary.backward_transfer),
    )
    return final_arrays, summary


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
