"""Settings of a federated continual run, resolved from the federated job's RunConfig.

A RunConfig with a non-empty `stream` describes a federated continual run. This module
turns it into the continual module's own `ContinualConfig`, so that the nodes build their
Avalanche strategies with exactly the settings `fedgraft continual` would use, and into
the `TaskSchedule` that gives the task each node trains on in each round.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedgraft.config import ConfigError, RunConfig
from fedgraft.continual.run_config import ContinualConfig, InputKind
from fedgraft.continual.streams import STREAMS
from fedgraft.continual.task_schedule import TaskSchedule, parse_task_lags

__all__ = ["FEDERATED_STRATEGIES", "FederatedContinualPlan", "plan_continual_run"]

# Continual strategies a node can run between rounds. GDumb is left out because it resets
# the model to its initial weights before every experience, which would discard the global
# model the server sends each round.
FEDERATED_STRATEGIES = ("naive", "cumulative", "replay", "latent-replay", "ewc", "lwf", "si", "gem", "agem")


@dataclass(frozen=True)
class FederatedContinualPlan:
    """The continual settings of the nodes and the task schedule of the server."""

    continual: ContinualConfig
    schedule: TaskSchedule

    @property
    def num_tasks(self) -> int:
        return self.schedule.num_tasks


def plan_continual_run(cfg: RunConfig) -> FederatedContinualPlan:
    """Resolve `cfg` into a plan; raise ConfigError for a combination that cannot run.

    Rejected: an unknown stream or strategy, more tasks than rounds, a strategy that
    cannot train a head on a frozen backbone's features, and the settings that
    `ContinualConfig.validate` rejects.
    """
    if cfg.stream not in STREAMS:
        raise ConfigError(f"--stream is {cfg.stream!r}, expected one of: {', '.join(STREAMS)}")
    if cfg.cl_strategy not in FEDERATED_STRATEGIES:
        reason = (
            " gdumb resets the model before every experience, so it would discard the global model."
            if cfg.cl_strategy == "gdumb" else ""
        )
        raise ConfigError(
            f"--cl-strategy is {cfg.cl_strategy!r}, expected one of: {', '.join(FEDERATED_STRATEGIES)}.{reason}"
        )
    if cfg.mode == "full":
        raise ConfigError(
            "--mode full trains the whole backbone, but a federated continual run trains on the frozen "
            "part's output on every node. Use --mode feature-extraction or --mode fine-tune."
        )
    if not cfg.cache_features:
        raise ConfigError(
            "--no-cache-features recomputes features every epoch, but continual strategies train on "
            "the nodes' stored features. Leave the feature cache on for a run with --stream."
        )

    num_tasks = cfg.num_tasks or STREAMS[cfg.stream].default_num_tasks
    try:
        lags = parse_task_lags(cfg.task_lags)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if cfg.rounds_per_task < 0:
        raise ConfigError(f"--rounds-per-task is {cfg.rounds_per_task}, expected an integer >= 0")
    rounds_per_task = cfg.rounds_per_task or cfg.rounds // num_tasks
    if rounds_per_task < 1:
        raise ConfigError(
            f"--rounds {cfg.rounds} is fewer than the {num_tasks} tasks of {cfg.stream}, so a task "
            f"would get no round. Pass --rounds >= {num_tasks}, or --rounds-per-task >= 1."
        )

    continual = ContinualConfig(
        stream=cfg.stream,
        num_tasks=num_tasks,
        seed=cfg.seed,
        strategies=(cfg.cl_strategy,),
        buffer_size=cfg.buffer_size,
        ewc_lambda=cfg.ewc_lambda,
        lwf_alpha=cfg.lwf_alpha,
        lwf_temperature=cfg.lwf_temperature,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer,
        backbone=cfg.backbone,
        weights=cfg.weights,
        image_size=cfg.image_size,
        input_kind=InputKind.FEATURES.value,
        data_dir=cfg.data_dir,
        cache_dir=cfg.cache_dir,
        output_dir=cfg.output_dir,
        run_dir=cfg.run_dir,
    ).validate()
    return FederatedContinualPlan(continual, TaskSchedule(num_tasks, rounds_per_task, lags))
