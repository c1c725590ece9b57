"""Plots of a run's per-round metrics."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

__all__ = ["plot_rounds"]


def plot_rounds(rounds: list[dict[str, Any]], path: Path) -> None:
    """Draw accuracy and loss per round side by side and save them as a PNG, atomically."""
    figure, (accuracy_axes, loss_axes) = plt.subplots(1, 2, figsize=(10, 4))
    series = (
        ("test-accuracy", "test_accuracy", accuracy_axes),
        ("val-accuracy", "val_accuracy", accuracy_axes),
        ("train-accuracy", "train_accuracy", accuracy_axes),
        ("test-loss", "test_loss", loss_axes),
        ("val-loss", "val_loss", loss_axes),
        ("train-loss", "train_loss", loss_axes),
    )
    for label, key, axes in series:
        points = [(r["round"], r[key]) for r in rounds if r.get(key) is not None]
        if points:
            xs, ys = zip(*points)
            axes.plot(xs, ys, marker="o", label=label)
    for axes, title in ((accuracy_axes, "accuracy"), (loss_axes, "loss")):
        axes.set_xlabel("round")
        axes.set_title(title)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    try:
        figure.savefig(tmp, dpi=100)
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        tmp.unlink(missing_ok=True)
