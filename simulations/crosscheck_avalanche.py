"""Cross-check fedgraft's continual runs against Avalanche's strategies called directly.

On split Fashion-MNIST (class-incremental, 5 experiences of 2 classes) the script trains a
linear head on frozen efficientnet_lite0 features twice per method, with the same data,
seed and hyperparameters:

- Avalanche directly, without fedgraft's strategy registry or runner: an ``nn.Linear``
  built right after ``RNGManager.set_random_seeds(seed)``, Avalanche's ``Naive`` with
  ``ReplayPlugin(storage_policy=ClassBalancedBuffer(...))`` for replay and Avalanche's
  ``EWC``, trained with ``strategy.train(experience)``. After each experience,
  ``strategy.eval(test_stream)`` runs, and the accuracies are read from the
  ``Top1_Acc_Exp`` metrics of the strategy's EvaluationPlugin;
- fedgraft's `run_experiment` with "latent-replay" (replay of feature rows) and "ewc".

Only the data comes from fedgraft on the Avalanche side: the stream of `prepare` and
the features of `feature_benchmark`, read through the same `FeatureCache` folder. The script
checks that both sides get identical feature rows and labels and the same initial head.
It reports both final average accuracies (the mean over experiences of the final
accuracy on each) and whether they agree within 1 point. It exits with code 1 when a
method does not agree, and 0 otherwise. From the repository root:

    .venv/bin/python -m fedgraft.simulations.crosscheck_avalanche

Quick check of the script itself (a minute or two, numbers meaningless):

    .venv/bin/python -m fedgraft.simulations.crosscheck_avalanche --train-samples-per-task 100 \\
        --test-samples-per-task 50 --image-size 32 --epochs 2 --output /tmp/crosscheck.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks import CLScenario
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.training import EWC, Naive
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from fedgraft.config import ConfigError
from fedgraft.continual.avalanche_adapter import feature_benchmark
from fedgraft.continual.avalanche_warnings import hide_avalanche_deprecations
from fedgraft.continual.experiment import PreparedStream, prepare, run_experiment
from fedgraft.continual.run_config import ContinualConfig, InputKind
from fedgraft.data.feature_cache import FeatureCache
from fedgraft.simulations.benchmark_common import (
    RESULTS_DIR,
    format_percent,
    format_points,
    markdown_table,
    positive_int,
    write_results,
)

# Largest difference in final average accuracy, as a fraction, for the two runs to agree.
MAX_ACCURACY_DIFFERENCE = 0.01

STREAM = "split-fmnist"
NUM_TASKS = 5
# Evaluation mini-batch size, as fedgraft's TrainingSettings.eval_batch_size. It changes
# speed only, not accuracy.
EVAL_BATCH_SIZE = 256

# The Avalanche method and the fedgraft strategy it is compared with.
METHODS = {"replay": "latent-replay", "ewc": "ewc"}

# Avalanche's per-experience and per-stream accuracy on the test stream, such as
# "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002".
EXPERIENCE_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")
STREAM_ACCURACY = re.compile(r"^Top1_Acc_Stream/eval_phase/test_stream/Task\d+$")

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "fedgraft-benchmarks" / "cache"


def build_strategy(method: str, model: nn.Module, args: argparse.Namespace) -> SupervisedTemplate:
    """Build Avalanche's replay or EWC strategy for ``model`` with plain Avalanche calls."""
    common: dict[str, Any] = {
        "optimizer": torch.optim.Adam(model.parameters(), lr=args.learning_rate),
        "criterion": nn.CrossEntropyLoss(),
        "train_mb_size": args.batch_size,
        "train_epochs": args.epochs,
        "eval_mb_size": EVAL_BATCH_SIZE,
        "device": "cpu",
        # No loggers: the metrics are read from the plugin, not printed.
        "evaluator": EvaluationPlugin(accuracy_metrics(experience=True, stream=True), loggers=[]),
    }
    if method == "replay":
        # adaptive_size=True divides the buffer over the classes seen so far (Avalanche's default).
        storage = ClassBalancedBuffer(max_size=args.buffer_size, adaptive_size=True)
        replay = ReplayPlugin(mem_size=args.buffer_size, storage_policy=storage)
        return Naive(model=model, plugins=[replay], **common)
    return EWC(model=model, ewc_lambda=args.ewc_lambda, mode="separate", **common)


def experience_accuracies(metrics: dict[str, Any], num_tasks: int) -> np.ndarray:
    """Return the Top1_Acc_Exp value of each test experience, in experience order."""
    recorded = {}
    for name, value in metrics.items():
        match = EXPERIENCE_ACCURACY.match(name)
        if match:
            recorded[int(match.group(1))] = float(value)
    if sorted(recorded) != list(range(num_tasks)):
        raise RuntimeError(
            f"Avalanche's evaluator recorded test accuracy for experiences {sorted(recorded)}, "
            f"expected 0 to {num_tasks - 1}"
        )
    return np.array([recorded[index] for index in range(num_tasks)])


def stream_accuracy(metrics: dict[str, Any]) -> float | None:
    """Return Avalanche's Top1_Acc_Stream, or None unless exactly one task label recorded one."""
    values = [float(value) for name, value in metrics.items() if STREAM_ACCURACY.match(name)]
    return values[0] if len(values) == 1 else None


def run_avalanche(
    method: str, benchmark: CLScenario, prepared: PreparedStream, args: argparse.Namespace
) -> dict[str, Any]:
    """Train ``method`` along ``benchmark`` with plain Avalanche calls and return R and the accuracies."""
    RNGManager.set_random_seeds(args.seed)
    model = nn.Linear(prepared.backbone.num_features, prepared.num_classes)
    initial_parameters = [parameter.detach().clone() for parameter in model.parameters()]
    with warnings.catch_warnings():
        # EvaluationPlugin warns when it has no logger, which is intended here.
        warnings.filterwarnings("ignore", message="No loggers specified", category=UserWarning)
        strategy = build_strategy(method, model, args)

    # Evaluate the untrained head first, as run_experiment does. Each DataLoader iterator draws
    # a seed from torch's RNG, so this also keeps the shuffling of both runs in step.
    num_tasks = len(benchmark.train_stream)
    baseline = experience_accuracies(strategy.eval(benchmark.test_stream), num_tasks)

    matrix = np.zeros((num_tasks, num_tasks))
    started = time.perf_counter()
    for step, experience in enumerate(benchmark.train_stream):
        strategy.train(experience)
        metrics = strategy.eval(benchmark.test_stream)
        matrix[step] = experience_accuracies(metrics, num_tasks)
    seconds = time.perf_counter() - started

    return {
        "matrix": matrix,
        "baseline": baseline,
        "average_accuracy": float(matrix[-1].mean()),
        "stream_accuracy": stream_accuracy(metrics),
        "seconds": seconds,
        "initial_parameters": initial_parameters,
    }


def same_initial_head(prepared: PreparedStream, seed: int, parameters: list[torch.Tensor]) -> bool:
    """Return whether fedgraft's seeded head starts with ``parameters``."""
    RNGManager.set_random_seeds(seed)
    head = prepared.transfer_model().head
    fedgraft_parameters = list(head.parameters())
    return len(fedgraft_parameters) == len(parameters) and all(
        torch.equal(ours, theirs) for ours, theirs in zip(fedgraft_parameters, parameters)
    )


def same_data(first: CLScenario, second: CLScenario) -> tuple[bool, int]:
    """Return whether two benchmarks contain identical inputs and labels, and the rows compared."""
    rows = 0
    for stream_name in ("train_stream", "test_stream"):
        first_stream = getattr(first, stream_name)
        second_stream = getattr(second, stream_name)
        if len(first_stream) != len(second_stream):
            return False, rows
        for first_experience, second_experience in zip(first_stream, second_stream):
            first_inputs, first_labels = _tensors(first_experience.dataset)
            second_inputs, second_labels = _tensors(second_experience.dataset)
            if not (torch.equal(first_inputs, second_inputs) and torch.equal(first_labels, second_labels)):
                return False, rows
            rows += len(first_labels)
    return True, rows


def _tensors(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[index] for index in range(len(dataset))]
    inputs = torch.stack([item[0] for item in items])
    labels = torch.tensor([int(item[1]) for item in items])
    return inputs, labels


def build_config(args: argparse.Namespace) -> ContinualConfig:
    """Return the validated fedgraft config with the same settings as the Avalanche runs."""
    return ContinualConfig(
        stream=STREAM,
        num_tasks=NUM_TASKS,
        seed=args.seed,
        strategies=tuple(METHODS.values()),
        buffer_size=args.buffer_size,
        ewc_lambda=args.ewc_lambda,
        ewc_mode="separate",
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        optimizer="adam",
        image_size=args.image_size,
        input_kind=InputKind.FEATURES.value,
        train_samples_per_task=args.train_samples_per_task,
        test_samples_per_task=args.test_samples_per_task,
        data_dir=args.data_dir,
        cache_dir=str(args.cache_dir),
    ).validate()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Compare fedgraft's continual runs with Avalanche's Replay and EWC called directly.",
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
        "--buffer-size", type=int, default=500, help="Replay buffer capacity in samples [default: 500]."
    )
    parser.add_argument(
        "--ewc-lambda", type=float, default=ContinualConfig.ewc_lambda,
        help=f"Weight of the EWC penalty [default: {ContinualConfig.ewc_lambda}].",
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=ContinualConfig.batch_size,
        help=f"Training mini-batch size of new samples [default: {ContinualConfig.batch_size}].",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=ContinualConfig.learning_rate,
        help=f"Learning rate of Adam [default: {ContinualConfig.learning_rate}].",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the stream, the head and the shuffling [default: 0].")

    # Files.
    parser.add_argument(
        "--data-dir", default=ContinualConfig.data_dir,
        help="Folder with the Fashion-MNIST idx files [default: %(default)s].",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
        help="Feature cache that both sides read, filled on first use [default: %(default)s].",
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS_DIR / "crosscheck_avalanche.json",
        help="Results JSON. The markdown table goes beside it with the suffix .md [default: %(default)s].",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = build_config(args)
    except ConfigError as err:
        parser.error(str(err))

    prepared = prepare(cfg)
    print(f"[stream] {STREAM}: {'; '.join(e.description for e in prepared.experiences)}", flush=True)
    started = time.perf_counter()
    fedgraft_benchmark, _ = prepared.benchmark(InputKind.FEATURES)
    avalanche_benchmark = feature_benchmark(
        prepared.experiences,
        prepared.transfer_model(),
        cfg.image_size,
        cache=FeatureCache(cfg.cache_dir),
        backbone_sha256=prepared.backbone_sha256,
    )
    identical_data, rows = same_data(avalanche_benchmark, fedgraft_benchmark)
    print(
        f"[features] {rows} rows in {time.perf_counter() - started:.1f} s (cache: {cfg.cache_dir}), "
        f"identical on both sides: {identical_data}",
        flush=True,
    )

    per_method = {}
    for method, fedgraft_name in METHODS.items():
        with hide_avalanche_deprecations():
            direct = run_avalanche(method, avalanche_benchmark, prepared, args)
            ours = run_experiment(cfg, fedgraft_name, prepared=prepared)
        identical_head = same_initial_head(prepared, args.seed, direct.pop("initial_parameters"))
        difference = ours.summary.average_accuracy - direct["average_accuracy"]
        per_method[method] = {
            "fedgraft_strategy": fedgraft_name,
            "avalanche": {key: _json_ready(value) for key, value in direct.items()},
            "fedgraft": {
                "matrix": ours.matrix.tolist(),
                "baseline": ours.baseline.tolist(),
                "average_accuracy": ours.summary.average_accuracy,
                "seconds": ours.stream_seconds,
            },
            "difference": difference,
            "largest_matrix_difference": float(np.abs(ours.matrix - direct["matrix"]).max()),
            "agree": abs(difference) <= MAX_ACCURACY_DIFFERENCE,
            "same_initial_head": identical_head,
        }
        print(
            f"[{method}] Avalanche {direct['average_accuracy']:.4f}, fedgraft {fedgraft_name} "
            f"{ours.summary.average_accuracy:.4f}, difference {format_points(difference)} points",
            flush=True,
        )

    table = _table(cfg, per_method, identical_data, rows)
    print("\n" + table)
    settings = {
        "config": cfg.to_dict(),
        "methods": METHODS,
        "eval_batch_size": EVAL_BATCH_SIZE,
        "torch_threads": torch.get_num_threads(),
        "avalanche_lib": importlib.metadata.version("avalanche-lib"),
    }
    results = {"identical_data": identical_data, "rows_compared": rows, "methods": per_method}
    write_results(args.output, "crosscheck_avalanche", settings, results, table)
    print(f"results: {args.output} and {args.output.with_suffix('.md')}")
    return 0 if all(entry["agree"] for entry in per_method.values()) else 1


def _table(cfg: ContinualConfig, per_method: dict[str, Any], identical_data: bool, rows: int) -> str:
    body = []
    for method, entry in per_method.items():
        body.append([
            f"{method} (fedgraft: {entry['fedgraft_strategy']})",
            format_percent(entry["avalanche"]["average_accuracy"]),
            format_percent(entry["avalanche"]["stream_accuracy"]),
            format_percent(entry["fedgraft"]["average_accuracy"]),
            format_points(entry["difference"]),
            f"{100 * entry['largest_matrix_difference']:.2f}",
            "yes" if entry["agree"] else "no",
        ])
    header = [
        "method",
        "Avalanche: average accuracy (%)",
        "Avalanche: Top1_Acc_Stream (%)",
        "fedgraft run_experiment: average accuracy (%)",
        "fedgraft - Avalanche (points)",
        "largest difference in R (points)",
        f"agree within {100 * MAX_ACCURACY_DIFFERENCE:.0f} point",
    ]
    heads = all(entry["same_initial_head"] for entry in per_method.values())
    caption = (
        f"{STREAM}, {NUM_TASKS} experiences of 2 classes, seed {cfg.seed}. Frozen {cfg.backbone} at "
        f"{cfg.image_size} px and a linear head. {_cap_label(cfg.train_samples_per_task).capitalize()} training and "
        f"{_cap_label(cfg.test_samples_per_task)} test images per experience, {_count(cfg.epochs, 'epoch')}, batch "
        f"{cfg.batch_size}, Adam with learning rate {cfg.learning_rate:g}, buffer {cfg.buffer_size}, "
        f"EWC lambda {cfg.ewc_lambda:g} (separate mode). Average accuracy is the mean over experiences "
        "of the final accuracy on each. Top1_Acc_Stream counts all test images together. "
        f"Identical features and labels on both sides: {'yes' if identical_data else 'no'} ({rows} rows). "
        f"Identical initial head: {'yes' if heads else 'no'}.\n\n"
    )
    return caption + markdown_table(header, body)


def _cap_label(cap: int) -> str:
    return "all" if cap == 0 else f"at most {cap}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _json_ready(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


if __name__ == "__main__":
    sys.exit(main())
