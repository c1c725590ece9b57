"""The `fedgraft simulate` job: check everything, then run the Flower App on a local SuperLink."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

import fedgraft
from fedgraft.config import ConfigError, RunConfig
from fedgraft.config_checks import check_clients_fit_samples

__all__ = ["SimulationPlan", "preflight", "run_simulation_job", "APP_DIR"]

logger = logging.getLogger(__name__)

# The Flower App is the fedgraft package itself: its pyproject.toml names the components.
APP_DIR = Path(fedgraft.__file__).resolve().parent

console = Console(stderr=True)


@dataclass(frozen=True)
class SimulationPlan:
    """Preflight results: where the run goes and how the data was split."""

    run_dir: Path
    client_sizes: list[tuple[int, int]]  # (train, validation) examples per client
    trainable_parameters: int


def preflight(cfg: RunConfig) -> SimulationPlan:
    """Check data, partitions and model before starting Flower; raise ConfigError on any problem."""
    from fedgraft.data.errors import DataError
    from fedgraft.data.partition import PartitionError
    from fedgraft.data.sources import client_partitions, training_data
    from fedgraft.models.errors import ModelError
    from fedgraft.models.factory import build_transfer_model
    from fedgraft.server.app import resolve_run_dir

    try:
        data = training_data(cfg.data_dir)
        check_clients_fit_samples(cfg, len(data))
        if cfg.stream:
            client_sizes = _continual_client_sizes(cfg)
        else:
            client_sizes = [(len(split.train), len(split.val)) for split in client_partitions(cfg)]
    except (DataError, PartitionError) as err:
        raise ConfigError(str(err)) from err

    try:
        model = build_transfer_model(cfg, num_classes=len(data.class_names))
    except ModelError as err:
        raise ConfigError(str(err)) from err
    except ValueError as err:  # a mode or block count this backbone cannot take
        raise ConfigError(str(err)) from err

    run_dir = resolve_run_dir(cfg)
    if not cfg.resume and (run_dir / "metrics.json").exists():
        raise ConfigError(f"run directory {run_dir} already contains a run; pass another --run-dir or remove it")
    return SimulationPlan(
        run_dir=run_dir,
        client_sizes=client_sizes,
        trainable_parameters=sum(p.numel() for p in model.parameters() if p.requires_grad),
    )


def resume_config(run_dir: Path) -> RunConfig:
    """Return the config of the interrupted run in `run_dir`, set to resume it; see `read_resume_config`."""
    from fedgraft.server.checkpoint import read_resume_config

    return read_resume_config(run_dir)


def _continual_client_sizes(cfg: RunConfig) -> list[tuple[int, int]]:
    """Return each node's (train, validation) images over all tasks of the stream."""
    from fedgraft.continual.errors import StreamError
    from fedgraft.continual.federated_config import plan_continual_run
    from fedgraft.continual.federated_data import node_tasks

    plan = plan_continual_run(cfg)
    try:
        shares = [node_tasks(cfg, plan, partition) for partition in range(cfg.num_clients)]
    except StreamError as err:
        raise ConfigError(str(err)) from err
    return [(sum(len(t.train) for t in tasks), sum(len(t.val) for t in tasks)) for tasks in shares]


def total_rounds(cfg: RunConfig) -> int:
    """Return the rounds the run lasts: `rounds`, or the task schedule's length with a stream."""
    if not cfg.stream:
        return cfg.rounds
    from fedgraft.continual.federated_config import plan_continual_run

    return plan_continual_run(cfg).schedule.total_rounds


def run_simulation_job(cfg: RunConfig, plan: SimulationPlan) -> int:
    """Run the simulation that `plan` checked; return the process exit code."""
    from fedgraft.run_report import print_report
    from fedgraft.server.local_superlink import LocalSuperLink, SuperLinkError
    from fedgraft.server.run_directory import read_metrics

    empty = [index for index, (train, _) in enumerate(plan.client_sizes) if train == 0]
    rounds = total_rounds(cfg)
    console.print(
        f"[bold]fedgraft[/bold]: {cfg.num_clients} clients, {rounds} rounds, {cfg.strategy}, "
        f"{cfg.backbone} ({cfg.mode}, {plan.trainable_parameters:,} trainable parameters)"
    )
    if cfg.stream:
        console.print(f"continual: stream {cfg.stream}, node strategy {cfg.cl_strategy}")
    sizes = ", ".join(str(train) for train, _ in plan.client_sizes)
    console.print(f"training examples per client: {sizes}")
    if empty:
        console.print(f"[yellow]clients with 0 training examples (their replies are not averaged in): {empty}")
    console.print(f"run directory: {plan.run_dir}")

    run_config = cfg.to_run_config()
    run_config["run-dir"] = str(plan.run_dir)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with LocalSuperLink(plan.run_dir / "flower") as link:
            link.run_app(APP_DIR, run_config, cfg.num_clients, timeout=cfg.round_timeout * (rounds + 2))
    except SuperLinkError as err:
        console.print(f"[red]error:[/red] {err}")
        return 1

    try:
        metrics = read_metrics(plan.run_dir)
    except FileNotFoundError:
        metrics = {}
    if not metrics.get("summary"):
        console.print(
            f"[red]error:[/red] the run ended without a summary; see the logs in {plan.run_dir / 'flower'}"
        )
        return 1
    print_report(plan.run_dir)
    return 0
