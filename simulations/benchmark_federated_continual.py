"""Benchmark: federated continual learning against centralized replay on the same images.

Every federated run is `fedgraft simulate --stream split-fmnist` with 10 nodes, Dirichlet
0.5 within each task and a frozen EfficientNet-Lite0, one run per node strategy. The
centralized reference trains the continual module's replay strategy on the union of the
nodes' training images of each task. Its buffer is as large as all node buffers together,
and it trains as many epochs per task as a node does (rounds per task x local epochs). It
tests on the same per-task test images as the server.

Targets: FL-replay's forgetting is at most half of FL-naive's, and FL-replay's average
accuracy is within 5 points of centralized replay.

    python -m fedgraft.simulations.benchmark_federated_continual
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedgraft.simulations.benchmark_common import (
    RESULTS_DIR,
    default_work_dir,
    format_percent,
    markdown_table,
    positive_int,
    run_simulation,
    simulate_options,
    write_results,
)

NAME = "federated_continual"
STRATEGIES = ("naive", "replay", "ewc", "lwf", "latent-replay")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="Comma-separated node strategies.")
    parser.add_argument("--num-clients", type=positive_int, default=10)
    parser.add_argument("--num-tasks", type=positive_int, default=5)
    parser.add_argument("--rounds-per-task", type=positive_int, default=3)
    parser.add_argument("--local-epochs", type=positive_int, default=3)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--buffer-size", type=positive_int, default=50, help="Buffer of each node in samples.")
    parser.add_argument(
        "--max-samples-per-client", type=positive_int, default=200, help="Cap on each node's images per task."
    )
    parser.add_argument("--test-samples", type=positive_int, default=2000, help="Server test images over all tasks.")
    parser.add_argument("--image-size", type=positive_int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=None, help="Node feature cache shared by the runs.")
    parser.add_argument("--run-timeout", type=float, default=7200.0)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / f"{NAME}.json")
    return parser.parse_args()


def run_settings(args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    return {
        "stream": "split-fmnist", "num_tasks": args.num_tasks, "rounds_per_task": args.rounds_per_task,
        "num_clients": args.num_clients, "partition": "dirichlet", "alpha": 0.5,
        "local_epochs": args.local_epochs, "learning_rate": args.learning_rate, "buffer_size": args.buffer_size,
        "max_samples_per_client": args.max_samples_per_client, "test_samples": args.test_samples,
        "image_size": args.image_size, "seed": args.seed, "cache_dir": str(cache_dir),
    }


def centralized_replay(settings: dict[str, Any], buffer_size: int) -> dict[str, Any]:
    """Train the continual module's replay on the union of the nodes' images; return its metrics."""
    from fedgraft.config import RunConfig
    from fedgraft.continual.avalanche_adapter import FeatureHead, benchmark_from_tensors
    from fedgraft.continual.avalanche_warnings import hide_avalanche_deprecations
    from fedgraft.continual.federated_config import plan_continual_run
    from fedgraft.continual.federated_data import node_tasks, task_test_sets
    from fedgraft.continual.metrics import summarize
    from fedgraft.continual.runner import run_stream, untrained_baseline
    from fedgraft.continual.strategies import create_strategy
    from fedgraft.continual.strategy_settings import ReplaySettings
    from fedgraft.data.feature_cache import FeatureCache
    from fedgraft.models.factory import build_transfer_model
    from fedgraft.models.state import state_dict_sha256

    cfg = RunConfig(**{**settings, "cl_strategy": "replay"})
    plan = plan_continual_run(cfg)
    torch.manual_seed(cfg.seed)
    model = build_transfer_model(cfg, num_classes=10)
    sha256 = state_dict_sha256(model.backbone.state_dict())
    cache = FeatureCache(cfg.cache_dir)

    started = time.perf_counter()
    shares = [node_tasks(cfg, plan, partition) for partition in range(cfg.num_clients)]
    train = []
    for task in range(plan.num_tasks):
        parts = [shares[partition][task].train for partition in range(cfg.num_clients)]
        features = [cache.features_for(model, sha256, part, cfg.image_size) for part in parts if len(part)]
        labels = [torch.from_numpy(part.labels).long() for part in parts if len(part)]
        train.append((torch.cat(features), torch.cat(labels)))
    tests = task_test_sets(cfg, plan)
    test = [(cache.features_for(model, sha256, t, cfg.image_size), torch.from_numpy(t.labels).long()) for t in tests]
    benchmark = benchmark_from_tensors(train, test, [0] * plan.num_tasks)
    features_seconds = time.perf_counter() - started

    head = FeatureHead(model)
    baseline = untrained_baseline(head, benchmark)
    replay = ReplaySettings(
        epochs=cfg.rounds_per_task * cfg.local_epochs, batch_size=cfg.batch_size, learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer, mem_size=buffer_size,
    )
    started = time.perf_counter()
    with hide_avalanche_deprecations():
        matrix = run_stream(create_strategy("replay", head, replay), benchmark)
    seconds = time.perf_counter() - started
    summary = summarize(matrix, baseline)
    return {
        **summary.to_dict(), "matrix": matrix.tolist(), "seconds": seconds, "features_seconds": features_seconds,
        "buffer_size": buffer_size, "epochs_per_task": replay.epochs,
        "train_images_per_task": [len(labels) for _, labels in train],
    }


def main() -> None:
    args = parse_args()
    work_dir = (args.work_dir or default_work_dir(NAME)).resolve()
    cache_dir = (args.cache_dir or work_dir / "cache").resolve()
    settings = run_settings(args, cache_dir)
    strategies = [name.strip() for name in args.strategies.split(",") if name.strip()]

    results: dict[str, Any] = {}
    for name in strategies:
        run = run_simulation(
            work_dir / f"fl-{name}", simulate_options({**settings, "cl_strategy": name}), args.run_timeout, f"FL-{name}"
        )
        continual = run.summary["continual"]
        results[f"FL-{name}"] = {
            "average_accuracy": continual["average_accuracy"],
            "average_forgetting": continual["average_forgetting"],
            "backward_transfer": continual["backward_transfer"],
            "forward_transfer": continual["forward_transfer"],
            "mean_bytes_per_round": continual["mean_bytes_per_round"],
            "wall_seconds": run.wall_seconds,
            "matrix": _read_matrix(run.run_dir),
            "run_dir": str(run.run_dir),
        }

    total_buffer = args.buffer_size * args.num_clients
    print(f"[centralized replay] buffer {total_buffer}", flush=True)
    results["centralized replay"] = centralized_replay(settings, total_buffer)

    table = _table(results)
    checks = _targets(results)
    print(table)
    for line in checks:
        print(line)
    write_results(args.output, NAME, settings, {"runs": results, "targets": checks}, table + "\n" + "\n".join(checks) + "\n")


def _read_matrix(run_dir: Path) -> list[list[float]]:
    return json.loads((run_dir / "matrix.json").read_text())["matrix"]


def _table(results: dict[str, Any]) -> str:
    rows = []
    for name, entry in results.items():
        bytes_per_round = entry.get("mean_bytes_per_round")
        seconds = entry.get("wall_seconds", entry.get("seconds"))
        rows.append([
            name,
            format_percent(entry["average_accuracy"]),
            _fraction(entry["average_forgetting"]),
            _fraction(entry["backward_transfer"]),
            "-" if bytes_per_round is None else f"{bytes_per_round:,.0f}",
            f"{seconds:.1f}",
        ])
    header = ["run", "average accuracy (%)", "forgetting", "BWT", "bytes per round", "seconds"]
    return markdown_table(header, rows)


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _targets(results: dict[str, Any]) -> list[str]:
    lines = []
    naive, replay = results.get("FL-naive"), results.get("FL-replay")
    central = results.get("centralized replay")
    if naive and replay:
        ratio = replay["average_forgetting"] / naive["average_forgetting"] if naive["average_forgetting"] else np.nan
        verdict = "met" if ratio <= 0.5 else "NOT met"
        lines.append(f"FL-replay forgetting / FL-naive forgetting = {ratio:.3f} (target <= 0.5: {verdict})")
    if replay and central:
        gap = 100 * (central["average_accuracy"] - replay["average_accuracy"])
        verdict = "met" if gap <= 5 else "NOT met"
        lines.append(f"centralized replay - FL-replay average accuracy = {gap:+.2f} points (target <= 5: {verdict})")
    return lines


if __name__ == "__main__":
    main()
