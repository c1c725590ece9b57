"""The run directory: resolved config, per-round metrics, final model and plot.

Layout of one run directory:

- `config.json`: the resolved RunConfig;
- `metrics.json`: `{"rounds": [...], "summary": {...}}`, one entry per round, rewritten
  atomically after every round so an interrupted run keeps what it measured;
- `model.safetensors`: the final global trainable arrays (the head, plus any backbone
  blocks that trained), with metadata naming the backbone, its SHA-256 and the mode;
- `metrics.png`: accuracy and loss per round.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from fedgraft.config import RunConfig
from fedgraft.models.state import save_state_file
from fedgraft.server.round_loop import RoundRecord

__all__ = ["RunDirectory", "read_metrics", "write_json_atomic"]

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
MODEL_FILE = "model.safetensors"
PLOT_FILE = "metrics.png"


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never a partial one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_metrics(run_dir: Path) -> dict[str, Any]:
    """Read a run directory's metrics.json; raise FileNotFoundError naming the path."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; RUN_DIR must be a directory written by `fedgraft simulate`")
    return json.loads(path.read_text())


class RunDirectory:
    """One run's output folder, written as the run goes."""

    def __init__(self, path: Path, cfg: RunConfig) -> None:
        self.path = path
        self.path.mkdir(parents=True, exist_ok=True)
        self.rounds: list[dict[str, Any]] = []
        self.summary: dict[str, Any] = {}
        write_json_atomic(self.path / CONFIG_FILE, cfg.to_run_config())

    def record_round(self, record: RoundRecord) -> None:
        self.rounds.append(record.to_dict())
        self._write_metrics()

    def set_summary(self, **values: Any) -> None:
        self.summary.update(values)
        self._write_metrics()

    def save_model(self, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
        path = self.path / MODEL_FILE
        save_state_file(state, path, metadata=metadata)
        return path

    def save_plot(self) -> Path:
        from fedgraft.server.plots import plot_rounds

        path = self.path / PLOT_FILE
        plot_rounds(self.rounds, path)
        return path

    def _write_metrics(self) -> None:
        write_json_atomic(self.path / METRICS_FILE, {"rounds": self.rounds, "summary": self.summary})
