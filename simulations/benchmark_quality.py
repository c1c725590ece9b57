"""Benchmark 1: test accuracy of federated transfer learning, its centralized limit and a from-scratch CNN.

For every seed from 0 to REPEATS - 1 and for two data sizes (RunConfig's cap of 500
samples per client, then --few-samples-per-client, 50 by default) it measures:

- federated: the default `fedgraft simulate` run, which trains a linear head with FedAvg
  on efficientnet_lite0 features (10 clients, Dirichlet alpha 0.5, 20 rounds);
- linear probe: the centralized limit on the same features. A fresh head, initialised as
  the federated one, trains in this process on the pooled training features of every
  client with the clients' optimizer and batch size for rounds * local_epochs epochs. The
  features come from the run's own feature cache, so they are the ones the clients used;
- small CNN: `small_cnn` trained from scratch, all layers, with FedAvg over the same
  rounds (`--backbone small_cnn --weights random --mode full --image-size 28`).

It prints a markdown table of medians over the seeds, with the per-seed values in
brackets, and writes the results JSON and the table. Full benchmark, from the repository root:

    .venv/bin/python -m fedgraft.simulations.benchmark_quality

Quick check of the script itself (minutes, numbers meaningless):

    .venv/bin/python -m fedgraft.simulations.benchmark_quality --repeats 1 --rounds 1 \\
        --num-clients 2 --max-samples-per-client 40 --few-samples-per-client 20 \\
        --test-samples 100 --output /tmp/quality.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from fedgraft.client.training import SGDSettings, evaluate_features, train_on_features
from fedgraft.config import RunConfig
from fedgraft.data.feature_cache import FeatureCache
from fedgraft.data.sources import client_data, test_data
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.state import state_dict_sha256
from fedgraft.models.transfer import TrainingMode
from fedgraft.simulations.benchmark_common import (
    BenchmarkError,
    add_run_arguments,
    default_work_dir,
    format_percent,
    format_points,
    markdown_table,
    median,
    positive_int,
    run_options,
    run_simulation,
    simulate_options,
    write_results,
)

# The from-scratch baseline: every layer trains, at Fashion-MNIST's own 28-pixel size.
SMALL_CNN_OPTIONS = {"backbone": "small_cnn", "weights": "random", "mode": "full", "image_size": 28}

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "fedgraft-benchmarks" / "cache"


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of the centralized linear probe for one federated run's configuration."""

    test_accuracy: float
    train_examples: int
    epochs: int
    seconds: float
    cache_hits: int  # feature-cache entries read, for the clients' data and the test set
    cache_misses: int  # entries this process had to compute, so the run did not share them


def linear_probe(cfg: RunConfig) -> ProbeResult:
    """Train a fresh head on every client's training features pooled, then test it.

    The model, its initial head, the partitions, the feature cache and the optimizer
    settings all come from `cfg`, as the clients and the server of the run built them.
    """
    if TrainingMode(cfg.mode) is not TrainingMode.FEATURE_EXTRACTION:
        raise BenchmarkError(f"the linear probe requires --mode feature-extraction, but the run used {cfg.mode}")
    started = time.perf_counter()
    torch.manual_seed(cfg.seed)

    # The server builds the same model, so the backbone hash, and with it the cache keys, match.
    test = test_data(cfg)
    model = build_transfer_model(cfg, num_classes=len(test.class_names))
    sha256 = state_dict_sha256(model.backbone.state_dict())
    cache = FeatureCache(cfg.cache_dir)

    # Pool the training features of every client that has any.
    features, labels = [], []
    for partition_id in range(cfg.num_clients):
        train, _ = client_data(cfg, partition_id)
        if len(train) == 0:
            continue
        features.append(cache.features_for(model, sha256, train, cfg.image_size))
        labels.append(torch.from_numpy(train.labels).long())
    if not features:
        raise BenchmarkError("no client has training examples, so the linear probe has nothing to train on")
    pooled_features = torch.cat(features)  # (N, num_features)
    pooled_labels = torch.cat(labels)  # (N,)

    # As many passes over the pooled data as each client makes over its own data in the run.
    settings = SGDSettings(
        epochs=cfg.rounds * cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    train_on_features(model, pooled_features, pooled_labels, settings, generator)

    test_features = cache.features_for(model, sha256, test, cfg.image_size)
    result = evaluate_features(model, test_features, torch.from_numpy(test.labels).long())
    return ProbeResult(
        test_accuracy=result.accuracy,
        train_examples=len(pooled_labels),
        epochs=settings.epochs,
        seconds=time.perf_counter() - started,
        cache_hits=cache.hits,
        cache_misses=cache.misses,
    )


def measure_seed(
    seed: int, samples_per_client: int, overrides: dict[str, Any], args: argparse.Namespace, work_dir: Path
) -> dict[str, Any]:
    """Run the federated model, the probe and the small CNN for one seed and data size."""
    label = f"seed {seed}, {_samples_label(samples_per_client)}"
    run_dir = work_dir / f"seed{seed}-samples{samples_per_client}"
    options = {
        **overrides,
        "seed": seed,
        "max_samples_per_client": samples_per_client,
        "cache_dir": str(args.cache_dir),
    }

    federated = run_simulation(
        run_dir / "federated", simulate_options(options), args.run_timeout, f"{label}, federated"
    )

    # The probe reads the run's own config, so it uses exactly the partitions the clients used.
    probe = linear_probe(RunConfig.from_run_config(federated.config).validate())
    print(
        f"[{label}, linear probe] {probe.train_examples} training examples, {probe.epochs} epochs, "
        f"{probe.seconds:.1f} s: test accuracy {format_percent(probe.test_accuracy)} % "
        f"(feature cache: {probe.cache_hits} hits, {probe.cache_misses} misses)",
        flush=True,
    )
    if probe.cache_misses:
        print(
            f"[{label}, linear probe] warning: {probe.cache_misses} feature sets were not in the run's cache "
            "and were computed here with the same code",
            flush=True,
        )

    small_cnn = run_simulation(
        run_dir / "small-cnn", simulate_options({**options, **SMALL_CNN_OPTIONS}), args.run_timeout,
        f"{label}, small CNN",
    )
    return {
        "seed": seed,
        "max_samples_per_client": samples_per_client,
        "backbone": federated.config["backbone"],
        "federated_accuracy": federated.final_test_accuracy,
        "probe_accuracy": probe.test_accuracy,
        "probe_gap": probe.test_accuracy - federated.final_test_accuracy,
        "small_cnn_accuracy": small_cnn.final_test_accuracy,
        "pretrained_advantage": federated.final_test_accuracy - small_cnn.final_test_accuracy,
        "federated_run": {
            "run_dir": str(federated.run_dir),
            "wall_seconds": federated.wall_seconds,
            "incomplete_rounds": federated.incomplete_rounds(),
        },
        "small_cnn_run": {
            "run_dir": str(small_cnn.run_dir),
            "wall_seconds": small_cnn.wall_seconds,
            "incomplete_rounds": small_cnn.incomplete_rounds(),
        },
        "probe": asdict(probe),
    }


# Result keys in table order: (key, row label, True for a difference in points).
ROWS = (
    ("federated_accuracy", "federated, {backbone} linear head: test accuracy (%)", False),
    ("probe_accuracy", "centralized linear probe, same features: test accuracy (%)", False),
    ("probe_gap", "gap, probe - federated (points)", True),
    ("small_cnn_accuracy", "federated small CNN from scratch: test accuracy (%)", False),
    ("pretrained_advantage", "pretrained - from scratch (points)", True),
)


def summarize(per_seed: list[dict[str, Any]], sizes: list[int]) -> tuple[dict[str, Any], str]:
    """Return the medians per data size and the markdown table of medians and per-seed values."""
    medians: dict[str, Any] = {}
    columns = []
    for size in sizes:
        entries = [entry for entry in per_seed if entry["max_samples_per_client"] == size]
        medians[str(size)] = {key: median(entry[key] for entry in entries) for key, _, _ in ROWS}
        columns.append(entries)

    rows = []
    backbone = per_seed[0]["backbone"]
    for key, row_label, is_difference in ROWS:
        fmt = format_points if is_difference else format_percent
        cells = [row_label.format(backbone=backbone)]
        for size, entries in zip(sizes, columns):
            values = ", ".join(fmt(entry[key]) for entry in entries)
            cells.append(f"{fmt(medians[str(size)][key])} ({values})")
        rows.append(cells)

    seeds = sorted({entry["seed"] for entry in per_seed})
    header = ["measure", *(_samples_label(size) for size in sizes)]
    caption = f"Median over seeds {', '.join(map(str, seeds))}; per-seed values in brackets.\n\n"
    return medians, caption + markdown_table(header, rows)


def _samples_label(samples_per_client: int) -> str:
    return "all samples per client" if samples_per_client == 0 else f"{samples_per_client} samples per client"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark 1: federated accuracy against the centralized linear probe and a small CNN.",
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="Seeds to run, 0 to REPEATS - 1 [default: 3]."
    )
    parser.add_argument(
        "--few-samples-per-client", type=int, default=50,
        help="Cap on each client's samples, train and validation together, for the few-sample runs [default: 50].",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
        help="Backbone store and feature cache shared by all runs, so features are computed once "
        "[default: %(default)s].",
    )
    add_run_arguments(parser, "quality")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides = run_options(args, parser)
    base_samples = overrides.pop("max_samples_per_client", RunConfig().max_samples_per_client)
    if args.few_samples_per_client < 1 or (base_samples and args.few_samples_per_client >= base_samples):
        parser.error(
            f"--few-samples-per-client is {args.few_samples_per_client}, expected an integer from 1 "
            f"to below --max-samples-per-client ({base_samples or 'no cap'})"
        )
    sizes = [base_samples, args.few_samples_per_client]
    work_dir = (args.work_dir or default_work_dir("quality")).resolve()
    print(f"run directories and logs: {work_dir}; feature cache: {args.cache_dir}", flush=True)

    try:
        per_seed = [
            measure_seed(seed, size, overrides, args, work_dir)
            for seed in range(args.repeats)
            for size in sizes
        ]
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1

    medians, table = summarize(per_seed, sizes)
    print("\n" + table)
    settings = {
        "repeats": args.repeats,
        "seeds": list(range(args.repeats)),
        "samples_per_client": sizes,
        "run_overrides": overrides,
        "small_cnn_options": SMALL_CNN_OPTIONS,
        "cache_dir": str(args.cache_dir),
        "work_dir": str(work_dir),
    }
    write_results(args.output, "quality", settings, {"median": medians, "per_seed": per_seed}, table)
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
