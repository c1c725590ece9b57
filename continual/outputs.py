"""Run directories of continual-learning experiments: R as JSON and CSV, the metrics, plots.

Layout for one strategy:

- ``matrix.json``: R with row and column labels, the baseline b and the task descriptions;
- ``matrix.csv``: R as a table, one row per training step, one column per test experience;
- ``summary.json``: ACC, forgetting, BWT, FWT, forgetting per task, seconds and the config,
  with null where a metric is undefined (BWT, FWT and forgetting for a single task);
- ``accuracy_matrix.png``: R as a heatmap with every value written in its cell;
- ``task_accuracy.png``: each task's accuracy after each training step.

For several strategies on one stream and seed, the run directory contains one such folder
per strategy, named after it, plus ``comparison.md`` (one table of the metrics),
``comparison.json`` (the same numbers) and ``comparison.png`` (average accuracy and
forgetting per strategy). Every file is written to a temporary name in the same folder
and then renamed, so a reader sees the old file or the new one, never a partial one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    # The experiment module imports Avalanche, which this module does not need at run time.
    from fedgraft.continual.experiment import ContinualResult
    from fedgraft.continual.run_config import ContinualConfig

__all__ = [
    "COMPARISON_FILES",
    "RUN_FILES",
    "resolve_run_dir",
    "write_comparison",
    "write_run_directory",
]

MATRIX_JSON = "matrix.json"
MATRIX_CSV = "matrix.csv"
SUMMARY_JSON = "summary.json"
MATRIX_PLOT = "accuracy_matrix.png"
TASK_PLOT = "task_accuracy.png"
COMPARISON_MD = "comparison.md"
COMPARISON_JSON = "comparison.json"
COMPARISON_PLOT = "comparison.png"

# Files of one strategy's folder, and the extra files of a comparison's run directory.
RUN_FILES = (MATRIX_JSON, MATRIX_CSV, SUMMARY_JSON, MATRIX_PLOT, TASK_PLOT)
COMPARISON_FILES = (COMPARISON_MD, COMPARISON_JSON, COMPARISON_PLOT)


def resolve_run_dir(cfg: ContinualConfig) -> Path:
    """Return ``cfg.run_dir``, or a new timestamped folder under ``cfg.output_dir``.

    The folder is named ``<timestamp>-<stream>-<strategy>`` for one strategy and
    ``<timestamp>-<stream>-comparison`` for several.
    """
    if cfg.run_dir:
        return Path(cfg.run_dir).expanduser().resolve()
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = cfg.strategies[0] if len(cfg.strategies) == 1 else "comparison"
    return (Path(cfg.output_dir).expanduser() / f"{stamp}-{cfg.stream}-{suffix}").resolve()


def write_run_directory(result: ContinualResult, cfg: ContinualConfig, path: Path) -> Path:
    """Write the files of `RUN_FILES` for one strategy into ``path``, created if needed."""
    path.mkdir(parents=True, exist_ok=True)
    num_tasks = len(result.matrix)
    row_labels = [f"after task {index}" for index in range(num_tasks)]
    column_labels = [f"task {index}" for index in range(num_tasks)]

    _write_json(
        path / MATRIX_JSON,
        {
            "description": (
                "matrix[i][j] is the accuracy on the test data of task j after training on "
                "tasks 0..i, as a fraction in [0, 1]. baseline[j] is the accuracy of the "
                "untrained head on task j."
            ),
            "row_labels": row_labels,
            "column_labels": column_labels,
            "tasks": list(result.task_descriptions),
            "matrix": result.matrix.tolist(),
            "baseline": result.baseline.tolist(),
        },
    )

    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["trained through", *column_labels])
    for label, row in zip(row_labels, result.matrix):
        writer.writerow([label, *(f"{value:.6f}" for value in row)])
    _write_text(path / MATRIX_CSV, table.getvalue())

    _write_json(path / SUMMARY_JSON, summary_payload(result, cfg))
    _plot_matrix(result, path / MATRIX_PLOT)
    _plot_task_accuracy(result, path / TASK_PLOT)
    return path


def summary_payload(result: ContinualResult, cfg: ContinualConfig) -> dict[str, Any]:
    """Return the content of summary.json: the metrics, the timings and the config."""
    return {
        "strategy": result.strategy,
        "stream": cfg.stream,
        "num_tasks": len(result.matrix),
        "seed": cfg.seed,
        "input_kind": result.input_kind.value,
        **result.summary.to_dict(),
        "baseline": result.baseline.tolist(),
        "final_accuracy_per_task": result.matrix[-1].tolist(),
        "seconds": {
            "stream": result.stream_seconds,
            "benchmark": result.benchmark_seconds,
        },
        "config": cfg.to_dict(),
    }


def write_comparison(
    results: Sequence[ContinualResult],
    cfg: ContinualConfig,
    path: Path,
    strategy_folders: bool = True,
) -> Path:
    """Write the files of `COMPARISON_FILES` into ``path``, and one folder per strategy.

    Pass ``strategy_folders=False`` when `write_run_directory` already wrote each
    strategy's folder, as the command line does after each strategy finishes.
    """
    if len(results) == 0:
        raise ValueError("write_comparison got no results, expected one per strategy")
    path.mkdir(parents=True, exist_ok=True)
    if strategy_folders:
        for result in results:
            write_run_directory(result, cfg, path / result.strategy)

    _write_text(path / COMPARISON_MD, comparison_markdown(results, cfg))
    _write_json(
        path / COMPARISON_JSON,
        {
            "stream": cfg.stream,
            "num_tasks": cfg.num_tasks,
            "seed": cfg.seed,
            "strategies": [
                {key: value for key, value in summary_payload(result, cfg).items() if key != "config"}
                for result in results
            ],
            "config": cfg.to_dict(),
        },
    )
    _plot_comparison(results, f"{cfg.stream}, {cfg.num_tasks} tasks, seed {cfg.seed}", path / COMPARISON_PLOT)
    return path


def comparison_markdown(results: Sequence[ContinualResult], cfg: ContinualConfig) -> str:
    """Return comparison.md: a heading, one table row per strategy and what the columns mean."""
    lines = [
        f"# {cfg.stream}, {cfg.num_tasks} tasks, seed {cfg.seed}",
        "",
        "| strategy | input | average accuracy | forgetting | BWT | FWT | seconds |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        summary = result.summary
        lines.append(
            f"| {result.strategy} | {result.input_kind.value} "
            f"| {_number(summary.average_accuracy)} | {_number(summary.average_forgetting)} "
            f"| {_number(summary.backward_transfer)} | {_number(summary.forward_transfer)} "
            f"| {result.stream_seconds:.1f} |"
        )
    lines += [
        "",
        "Accuracies are fractions of the test images. Average accuracy is the mean final "
        "accuracy over all tasks. Forgetting is the mean drop from each task's best accuracy "
        "to its final one (Chaudhry et al., 2018), so lower is better. BWT is the mean change "
        "of each earlier task's accuracy from its own training step to the end, negative when "
        "the model forgets. FWT is the mean gain on each task just before training on it, "
        "over the untrained head (Lopez-Paz and Ranzato, 2017). n/a marks a metric that is "
        "undefined for a single task. Seconds is the wall time of training along the stream "
        "and filling the accuracy matrix, without building the benchmark.",
        "",
    ]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _plot_matrix(result: ContinualResult, path: Path) -> None:
    """Draw R as a heatmap with each value written in its cell."""
    matrix = result.matrix
    num_tasks = len(matrix)
    side = 2.0 + 0.8 * num_tasks
    figure, axes = plt.subplots(figsize=(side + 1.0, side))
    image = axes.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    for row in range(num_tasks):
        for column in range(num_tasks):
            value = matrix[row, column]
            # Dark text on the light (high) end of viridis, light text on the dark end.
            colour = "black" if value > 0.6 else "white"
            axes.text(column, row, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=9)
    ticks = range(num_tasks)
    axes.set_xticks(ticks, [str(index) for index in ticks])
    axes.set_yticks(ticks, [str(index) for index in ticks])
    axes.set_xlabel("test task j")
    axes.set_ylabel("after training on tasks 0..i")
    axes.set_title(f"{result.strategy}: accuracy matrix R[i, j]")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="accuracy")
    _save_figure(figure, path)


def _plot_task_accuracy(result: ContinualResult, path: Path) -> None:
    """Draw each task's accuracy after each training step, dashed before its own step."""
    matrix = result.matrix
    num_tasks = len(matrix)
    steps = np.arange(num_tasks)
    figure, axes = plt.subplots(figsize=(7, 4))
    for task in range(num_tasks):
        colour = f"C{task % 10}"
        # Dashed up to the task's own step: accuracy on a task not trained yet.
        axes.plot(steps[: task + 1], matrix[: task + 1, task], linestyle="--", color=colour, alpha=0.5)
        axes.plot(steps[task:], matrix[task:, task], marker="o", color=colour, label=f"task {task}")
    axes.set_xticks(steps, [str(step) for step in steps])
    axes.set_xlabel("after training on task")
    axes.set_ylabel("test accuracy")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(f"{result.strategy}: accuracy of each task (dashed: before its own training)")
    axes.grid(alpha=0.3)
    axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    _save_figure(figure, path)


def _plot_comparison(results: Sequence[ContinualResult], title: str, path: Path) -> None:
    """Draw bars of average accuracy and average forgetting per strategy."""
    names = [result.strategy for result in results]
    accuracy = [result.summary.average_accuracy for result in results]
    # A single task has no forgetting. NaN draws no bar.
    forgetting = [
        math.nan if result.summary.average_forgetting is None else result.summary.average_forgetting
        for result in results
    ]
    positions = np.arange(len(names))
    width = 0.38
    figure, axes = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2.0), 4))
    axes.bar(positions - width / 2, accuracy, width, label="average accuracy (higher is better)")
    axes.bar(positions + width / 2, forgetting, width, label="forgetting (lower is better)")
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(positions, names, rotation=20, ha="right")
    axes.set_ylabel("fraction of test images")
    # Room above the bars for the legend. Forgetting can be negative when accuracy rose.
    lowest = min([0.0, *(value for value in forgetting if not math.isnan(value))])
    axes.set_ylim(lowest - 0.05, 1.2)
    axes.set_title(title)
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper center", ncol=2, fontsize="small")
    _save_figure(figure, path)


def _save_figure(figure, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        figure.tight_layout()
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, payload: Any) -> None:
    # allow_nan=False because NaN is not JSON. Undefined metrics are None, written as null.
    _write_text(path, json.dumps(payload, indent=2, allow_nan=False) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
