"""Benchmark 4: continual-learning strategies on split Fashion-MNIST, 5 experiences of 2 classes.

Every strategy of `fedgraft.continual.strategies.STRATEGIES` (or those of --strategies)
trains along one class-incremental stream with one seed. The stream, the frozen
efficientnet_lite0 backbone and the feature benchmark are built once and shared, and
`run_experiment` seeds the global RNGs before it builds each head, so every strategy
starts from the same head. All strategies train a linear head on cached backbone
features, except "replay", which replays images: the frozen backbone runs on every
mini-batch, replayed images included, and on every test image whenever R is filled.

The script prints a markdown table of average accuracy, average forgetting, BWT, FWT and
seconds per strategy, with cumulative (joint training) marked as the ceiling, and checks
two targets:

- (a) replay with a 500-image buffer reaches average accuracy >= 0.75 and average
  forgetting <= 0.15;
- (b) latent replay, with the same buffer of feature rows, ends within 2 points of image
  replay's average accuracy in <= 0.3 times its seconds. Both times cover training along
  the stream and filling R. The one-time feature extraction is reported on its own row,
  and a second ratio adds it to latent replay's time.

The feature cache is a new, empty folder under the work directory, so the extraction is
measured, never read from an earlier run. Each strategy's run directory (R as JSON and
CSV, plots) and comparison.md go to the work directory as well. Full benchmark, from the
repository root:

    .venv/bin/python -m fedgraft.simulations.benchmark_continual

Quick check of the script itself (a minute or two, numbers meaningless):

    .venv/bin/python -m fedgraft.simulations.benchmark_continual --train-samples-per-task 100 \\
        --test-samples-per-task 50 --image-size 32 --epochs 2 \\
        --strategies naive,replay,latent-replay --output /tmp/continual.json
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedgraft.config import ConfigError
from fedgraft.continual.outputs import write_comparison, write_run_directory
from fedgraft.continual.run_config import STRATEGY_NAMES, ContinualConfig, InputKind
from fedgraft.simulations.benchmark_common import (
    RESULTS_DIR,
    default_work_dir,
    format_points,
    markdown_table,
    positive_int,
    write_results,
)

if TYPE_CHECKING:
    # The experiment module imports Avalanche, which takes seconds, so argument errors are
    # reported before that import.
    from fedgraft.continual.experiment import ContinualResult, ProgressUpdate

# Target (a): image replay with a 500-image buffer.
MIN_REPLAY_ACCURACY = 0.75
MAX_REPLAY_FORGETTING = 0.15
# Target (b): latent replay against image replay, accuracy in fractions (0.02 = 2 points).
MAX_LATENT_ACCURACY_GAP = 0.02
MAX_LATENT_TIME_RATIO = 0.3

STREAM = "split-fmnist"
NUM_TASKS = 5
# The strategy that trains on images. Every other strategy trains on cached features.
IMAGE_STRATEGY = "replay"
LATENT_STRATEGY = "latent-replay"
CEILING_STRATEGY = "cumulative"

# Seconds between two progress lines of the feature extraction.
PROGRESS_SECONDS = 10.0


class ProgressPrinter:
    """Progress callback that prints the feature extraction every PROGRESS_SECONDS and each finished experience."""

    def __init__(self) -> None:
        self.last_features_line = -math.inf
        self.features_finished = False
        self.training_started: dict[str, float] = {}

    def __call__(self, update: ProgressUpdate) -> None:
        from fedgraft.continual.experiment import Stage

        now = time.perf_counter()
        if update.stage is Stage.FEATURES:
            finished = update.done >= update.total
            if self.features_finished or (not finished and now - self.last_features_line < PROGRESS_SECONDS):
                return
            self.last_features_line = now
            self.features_finished = finished
            print(f"[features] {update.done}/{update.total} images through the backbone", flush=True)
            return

        if update.done == 0:
            self.training_started[update.strategy] = now
            print(f"[{update.strategy}] training on {update.total} experiences", flush=True)
            return
        elapsed = now - self.training_started[update.strategy]
        print(f"[{update.strategy}] experience {update.done}/{update.total} done, {elapsed:.1f} s", flush=True)


def build_configs(args: argparse.Namespace, work_dir: Path) -> tuple[ContinualConfig, ContinualConfig]:
    """Return the validated configs on features and on images, which differ only in input kind.

    Raises ConfigError for an invalid option.
    """
    strategies = tuple(name.strip() for name in args.strategies.split(",") if name.strip())
    features = ContinualConfig(
        stream=STREAM,
        num_tasks=NUM_TASKS,
        seed=args.seed,
        strategies=strategies,
        buffer_size=args.buffer_size,
        epochs=args.epochs,
        image_size=args.image_size,
        input_kind=InputKind.FEATURES.value,
        train_samples_per_task=args.train_samples_per_task,
        test_samples_per_task=args.test_samples_per_task,
        data_dir=args.data_dir,
        cache_dir=str(work_dir / "cache"),
        run_dir=str(work_dir / "comparison"),
    ).validate()
    images = dataclasses.replace(features, input_kind=InputKind.IMAGES.value).validate()
    return features, images


def run_strategies(features_cfg: ContinualConfig, images_cfg: ContinualConfig) -> list[ContinualResult]:
    """Train every strategy on one prepared stream and write each one's run directory."""
    from fedgraft.continual.avalanche_warnings import hide_avalanche_deprecations
    from fedgraft.continual.experiment import prepare, run_experiment

    started = time.perf_counter()
    prepared = prepare(features_cfg)
    sizes = ", ".join(f"{len(e.train)}/{len(e.test)}" for e in prepared.experiences)
    print(
        f"[stream] {STREAM}, {len(prepared.experiences)} experiences, train/test images per experience: "
        f"{sizes}. Stream and backbone {prepared.backbone.name} ready in {time.perf_counter() - started:.1f} s",
        flush=True,
    )

    run_dir = Path(features_cfg.run_dir)
    progress = ProgressPrinter()
    results = []
    for name in features_cfg.strategies:
        cfg = images_cfg if name == IMAGE_STRATEGY else features_cfg
        # Hides the DeprecationWarnings that Avalanche's replay and GDumb plugins raise from
        # inside Avalanche at every experience, as `fedgraft continual` does.
        with hide_avalanche_deprecations():
            result = run_experiment(cfg, name, progress, prepared)
        summary = result.summary
        print(
            f"[{name}] {result.input_kind.value}: average accuracy {summary.average_accuracy:.3f}, "
            f"forgetting {_fraction(summary.average_forgetting)}, {result.stream_seconds:.1f} s",
            flush=True,
        )
        write_run_directory(result, cfg, run_dir / name)
        results.append(result)
    write_comparison(results, features_cfg, run_dir, strategy_folders=False)
    return results


def strategy_table(results: list[ContinualResult]) -> str:
    """Return the markdown table with one row per strategy."""
    rows = []
    for result in results:
        summary = result.summary
        label = result.strategy
        if result.strategy == CEILING_STRATEGY:
            label += " (joint training, ceiling)"
        rows.append([
            label,
            result.input_kind.value,
            f"{summary.average_accuracy:.3f}",
            _fraction(summary.average_forgetting),
            _fraction(summary.backward_transfer),
            _fraction(summary.forward_transfer),
            f"{result.stream_seconds:.1f}",
        ])
    header = ["strategy", "input", "average accuracy", "average forgetting", "BWT", "FWT", "seconds"]
    return markdown_table(header, rows)


def check_targets(results: list[ContinualResult]) -> tuple[dict[str, Any], list[list[str]]]:
    """Return targets (a) and (b) as a JSON-ready dict and as table rows.

    A target whose strategy did not run is None in the dict and "not run" in the table.
    """
    by_name = {result.strategy: result for result in results}
    replay = by_name.get(IMAGE_STRATEGY)
    latent = by_name.get(LATENT_STRATEGY)
    targets: dict[str, Any] = {"replay": None, "latent_replay": None}
    rows: list[list[str]] = []

    if replay is None:
        rows.append(["(a) replay, images", "not run", "", ""])
    else:
        accuracy = replay.summary.average_accuracy
        forgetting = replay.summary.average_forgetting
        targets["replay"] = {
            "average_accuracy": accuracy,
            "average_accuracy_met": accuracy >= MIN_REPLAY_ACCURACY,
            "average_forgetting": forgetting,
            "average_forgetting_met": forgetting is not None and forgetting <= MAX_REPLAY_FORGETTING,
        }
        rows += [
            ["(a) replay, images: average accuracy", f"{accuracy:.3f}",
             f">= {MIN_REPLAY_ACCURACY}", _met(targets["replay"]["average_accuracy_met"])],
            ["(a) replay, images: average forgetting", _fraction(forgetting),
             f"<= {MAX_REPLAY_FORGETTING}", _met(targets["replay"]["average_forgetting_met"])],
        ]

    if replay is None or latent is None:
        rows.append(["(b) latent replay against image replay", "not run", "", ""])
        return targets, rows

    gap = latent.summary.average_accuracy - replay.summary.average_accuracy
    extraction = latent.benchmark_seconds
    time_ratio = latent.stream_seconds / replay.stream_seconds
    ratio_with_extraction = (latent.stream_seconds + extraction) / replay.stream_seconds
    targets["latent_replay"] = {
        "average_accuracy": latent.summary.average_accuracy,
        "accuracy_gap": gap,
        "accuracy_gap_met": abs(gap) <= MAX_LATENT_ACCURACY_GAP,
        "image_replay_seconds": replay.stream_seconds,
        "latent_replay_seconds": latent.stream_seconds,
        "feature_extraction_seconds": extraction,
        "image_benchmark_seconds": replay.benchmark_seconds,
        "time_ratio": time_ratio,
        "time_ratio_met": time_ratio <= MAX_LATENT_TIME_RATIO,
        "time_ratio_with_extraction": ratio_with_extraction,
    }
    rows += [
        ["(b) latent replay, features: average accuracy", f"{latent.summary.average_accuracy:.3f}", "", ""],
        ["(b) accuracy, latent - image replay (points)", format_points(gap),
         f"within ±{100 * MAX_LATENT_ACCURACY_GAP:.0f}", _met(targets["latent_replay"]["accuracy_gap_met"])],
        ["(b) image replay: training and filling R, backbone on every batch (s)",
         f"{replay.stream_seconds:.1f}", "", ""],
        ["(b) latent replay: training and filling R on cached features (s)",
         f"{latent.stream_seconds:.1f}", "", ""],
        ["(b) one-time feature extraction, every train and test image (s)", f"{extraction:.1f}", "", ""],
        ["(b) time ratio, latent / image replay", f"{time_ratio:.3f}",
         f"<= {MAX_LATENT_TIME_RATIO}", _met(targets["latent_replay"]["time_ratio_met"])],
        ["(b) time ratio, (latent + extraction) / image replay", f"{ratio_with_extraction:.3f}", "", ""],
    ]
    return targets, rows


def _fraction(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _met(ok: bool) -> str:
    return "yes" if ok else "no"


def _caption(cfg: ContinualConfig, results: list[ContinualResult]) -> str:
    first = results[0]
    return (
        f"{STREAM}: class-incremental Fashion-MNIST, {NUM_TASKS} experiences of 2 classes "
        f"({'; '.join(first.task_descriptions)}), seed {cfg.seed}. Frozen {cfg.backbone} "
        f"({cfg.weights} weights) at {cfg.image_size} px and a linear head over all 10 classes. "
        f"{_cap_label(cfg.train_samples_per_task).capitalize()} training and "
        f"{_cap_label(cfg.test_samples_per_task)} "
        f"test images per experience, {_count(cfg.epochs, 'epoch')} per experience, batch {cfg.batch_size}, "
        f"optimizer {cfg.optimizer} with learning rate {cfg.learning_rate:g}, buffer {cfg.buffer_size} "
        f"samples. `{IMAGE_STRATEGY}` trains on images, so the frozen backbone runs on every mini-batch. "
        "Every other strategy trains on cached features.\n\n"
        "Accuracies are fractions of the test images. Average accuracy is the mean final accuracy "
        "over the experiences, forgetting the mean drop from each experience's best accuracy to its "
        "final one (Chaudhry et al., 2018). BWT and FWT follow Lopez-Paz and Ranzato (2017), with the "
        "untrained head as FWT's baseline. Seconds is the wall time of training along the stream and "
        "filling the accuracy matrix R after each experience, so on images it includes the "
        "backbone's pass over every test image at each step. It leaves out building the benchmark, "
        "such as the one-time feature extraction.\n\n"
    )


def _cap_label(cap: int) -> str:
    return "all" if cap == 0 else f"at most {cap}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Benchmark 4: continual-learning strategies on split Fashion-MNIST (5 experiences of 2 classes).",
    )

    # Data and model input.
    parser.add_argument(
        "--train-samples-per-task", type=int, default=1000,
        help="Cap on each experience's training images, a seeded class-balanced subset. 0 means "
        "all 12,000 [default: 1000].",
    )
    parser.add_argument(
        "--test-samples-per-task", type=int, default=500,
        help="Cap on each experience's test images. 0 means all 2,000 [default: 500].",
    )
    parser.add_argument(
        "--image-size", type=int, default=96, help="Side in pixels that images are resized to [default: 96]."
    )

    # Training.
    parser.add_argument(
        "--epochs", type=positive_int, default=ContinualConfig.epochs,
        help=f"Passes over each experience's training data [default: {ContinualConfig.epochs}].",
    )
    parser.add_argument(
        "--buffer-size", type=int, default=500,
        help="Buffer capacity in samples of replay, latent-replay and gdumb. gem and agem keep "
        "buffer-size // 5 per experience [default: 500].",
    )
    parser.add_argument(
        "--strategies", "--strategy", default=",".join(STRATEGY_NAMES),
        help="Comma-separated strategies, run in this order [default: all: %(default)s].",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the stream, the head and the shuffling [default: 0].")

    # Files.
    parser.add_argument(
        "--data-dir", default=ContinualConfig.data_dir,
        help="Folder with the Fashion-MNIST idx files [default: %(default)s].",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help=f"New folder for the feature cache and the run directories [default: a new folder under "
        f"{default_work_dir('continual').parent}].",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "continual.json",
        help="Results JSON. The markdown table goes beside it with the suffix .md [default: %(default)s].",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    work_dir = (args.work_dir or default_work_dir("continual")).resolve()
    cache_dir = work_dir / "cache"
    if cache_dir.exists() and any(cache_dir.iterdir()):
        parser.error(
            f"{cache_dir} already contains features, so the feature extraction would not be timed. "
            "Pass a new --work-dir."
        )
    try:
        features_cfg, images_cfg = build_configs(args, work_dir)
    except ConfigError as err:
        parser.error(str(err))
    print(f"feature cache and run directories: {work_dir}, torch threads: {torch.get_num_threads()}", flush=True)

    results = run_strategies(features_cfg, images_cfg)

    targets, target_rows = check_targets(results)
    table = (
        _caption(features_cfg, results)
        + strategy_table(results)
        + "\nTargets (a) and (b).\n\n"
        + markdown_table(["measure", "value", "target", "met"], target_rows)
    )
    print("\n" + table)
    settings = {
        "config": features_cfg.to_dict(),
        "image_strategy": IMAGE_STRATEGY,
        "torch_threads": torch.get_num_threads(),
        "avalanche_lib": importlib.metadata.version("avalanche-lib"),
        "work_dir": str(work_dir),
    }
    strategies = [
        {
            "strategy": result.strategy,
            "input_kind": result.input_kind.value,
            **result.summary.to_dict(),
            "stream_seconds": result.stream_seconds,
            "benchmark_seconds": result.benchmark_seconds,
            "matrix": result.matrix.tolist(),
            "baseline": result.baseline.tolist(),
        }
        for result in results
    ]
    write_results(args.output, "continual", settings, {"strategies": strategies, "targets": targets}, table)
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
