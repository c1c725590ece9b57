"""The server's checkpoint: everything a run needs to continue after the round it records.

`checkpoint.pt` in the run directory is rewritten atomically after every round. It
contains the global trainable arrays, the round and the metrics of every round so far. It
also contains Flower's strategy object, because server optimizer moments and an adaptive
DP clipping norm change between rounds. Continual runs add the recorder's state, and the
states of the server's random number generators come last. `fedgraft simulate --resume
RUN_DIR` continues from the next round. On the CPU, with the nodes' data and caches
unchanged, the resumed run ends with the same weights as a run that was never interrupted,
because each node seeds its training by run seed, round and node.

The file is a torch pickle. Load only checkpoints that your own runs wrote.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from flwr.serverapp.strategy import Strategy

from fedgraft.config import ConfigError, RunConfig
from fedgraft.models.state import to_array_record, to_state_dict

__all__ = [
    "CHECKPOINT_FILE", "Checkpoint", "CheckpointError", "load_checkpoint", "read_resume_config", "save_checkpoint",
]

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or written for another run."""


@dataclass
class Checkpoint:
    """The state of a run after `round`."""

    round: int
    arrays: ArrayRecord
    strategy: Strategy
    # Metrics of rounds 0..round, as metrics.json lists them.
    rounds: list[dict[str, Any]]
    # Extra state of the run's kind, such as the continual recorder's.
    extra: dict[str, Any]
    rng_states: dict[str, Any]

    def restore_rng(self) -> None:
        """Set Python's, NumPy's and torch's generators to their states after `round`."""
        random.setstate(self.rng_states["python"])
        np.random.set_state(self.rng_states["numpy"])
        torch.set_rng_state(self.rng_states["torch"])


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    arrays: ArrayRecord,
    strategy: Strategy,
    rounds: list[dict[str, Any]],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint after `server_round`, replacing the previous one atomically."""
    payload = {
        "format": FORMAT_VERSION,
        "round": server_round,
        "arrays": to_state_dict(arrays),
        "strategy": strategy,
        "rounds": rounds,
        "extra": extra or {},
        "rng_states": {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        },
    }
    path = Path(run_dir) / CHECKPOINT_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the checkpoint of `run_dir`; raise CheckpointError naming the file and the fix."""
    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} not found: the run in {run_dir} ended before its first round, or was written by "
            "a fedgraft without checkpoints. Start a new run instead of --resume."
        )
    try:
        # The strategy is a pickled Flower object, so the full unpickler is needed.
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unknown format; it was not written by this fedgraft")
    return Checkpoint(
        round=int(payload["round"]),
        arrays=to_array_record(payload["arrays"]),
        strategy=payload["strategy"],
        rounds=list(payload["rounds"]),
        extra=dict(payload["extra"]),
        rng_states=payload["rng_states"],
    )


def read_resume_config(run_dir: Path) -> RunConfig:
    """Return the config of the interrupted run in `run_dir`, set to resume it.

    Raises ConfigError when the folder contains no run, a finished run, or no checkpoint.
    """
    from fedgraft.server.run_directory import CONFIG_FILE, METRICS_FILE

    run_dir = run_dir.expanduser().resolve()
    config_path = run_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"--resume {run_dir}: {config_path} not found; pass the run directory of an interrupted run")
    metrics_path = run_dir / METRICS_FILE
    if metrics_path.is_file() and json.loads(metrics_path.read_text()).get("summary"):
        raise ConfigError(f"--resume {run_dir}: the run already finished; see `fedgraft report {run_dir}`")
    if not (run_dir / CHECKPOINT_FILE).is_file():
        raise ConfigError(
            f"--resume {run_dir}: no {CHECKPOINT_FILE}, so the run stopped before its first round ended. "
            "Start it again without --resume."
        )
    values = json.loads(config_path.read_text())
    values.update({"resume": str(run_dir), "run-dir": str(run_dir)})
    return RunConfig.from_run_config(values).validate()
