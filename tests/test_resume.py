"""Checkpoints and --resume: an interrupted run continues and ends with the same weights.

Each run starts its own SuperLink on 127.0.0.1. The interrupted run gets SIGINT, as from
Ctrl-C, right after its first checkpoint, which stops its SuperLink and nodes.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open

from fedgraft.cli import cli
from fedgraft.server.checkpoint import CHECKPOINT_FILE, CheckpointError, load_checkpoint

RUN_TIMEOUT_S = 600
SMALL_RUN = [
    "--num-clients", "3", "--rounds", "4", "--max-samples-per-client", "100", "--test-samples", "200",
    "--image-size", "32", "--strategy", "fedadam", "--server-learning-rate", "0.05", "--seed", "1",
]


def simulate_command(run_dir: Path, cache_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fedgraft.cli", "simulate", *SMALL_RUN, "--run-dir", str(run_dir),
            "--cache-dir", str(cache_dir), *extra]


def model_hash(run_dir: Path) -> str:
    with safe_open(run_dir / "model.safetensors", "pt") as handle:
        return handle.metadata()["state-sha256"]


def checkpoint_round(run_dir: Path) -> int:
    try:
        return load_checkpoint(run_dir).round
    except CheckpointError:
        return -1


def interrupt_after_round(command: list[str], run_dir: Path, server_round: int) -> None:
    """Start `command`, send SIGINT once the checkpoint of `server_round` exists, and wait for the exit."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while checkpoint_round(run_dir) < server_round and process.poll() is None:
            assert time.monotonic() < deadline, "the run wrote no checkpoint in time"
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_resumed_run_ends_with_same_weights(tmp_path):
    cache_dir = tmp_path / "cache"
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    completed = subprocess.run(simulate_command(straight, cache_dir), capture_output=True, text=True,
                               timeout=RUN_TIMEOUT_S)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]

    interrupt_after_round(simulate_command(interrupted, cache_dir), interrupted, server_round=1)
    stopped_after = checkpoint_round(interrupted)
    assert 1 <= stopped_after < 4
    assert not json.loads((interrupted / "metrics.json").read_text())["summary"]

    resumed = subprocess.run([sys.executable, "-m", "fedgraft.cli", "simulate", "--resume", str(interrupted)],
                             capture_output=True, text=True, timeout=RUN_TIMEOUT_S)

    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert model_hash(interrupted) == model_hash(straight)
    rounds = json.loads((interrupted / "metrics.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2, 3, 4]
    assert load_checkpoint(interrupted).round == 4


def test_checkpoint_holds_round_arrays_and_strategy(tmp_path):
    from flwr.serverapp.strategy import FedAdam

    from fedgraft.models.state import to_array_record
    from fedgraft.server.checkpoint import save_checkpoint

    strategy = FedAdam()
    strategy.m_t = {"head.weight": torch.ones(2, 3).numpy()}
    arrays = to_array_record({"head.weight": torch.arange(6.0).reshape(2, 3)})

    save_checkpoint(tmp_path, 3, arrays, strategy, rounds=[{"round": 0}], extra={"continual": {"rows": {}}})
    checkpoint = load_checkpoint(tmp_path)

    assert checkpoint.round == 3
    assert torch.equal(torch.from_numpy(checkpoint.arrays["head.weight"].numpy()), torch.arange(6.0).reshape(2, 3))
    assert checkpoint.strategy.m_t["head.weight"].sum() == 6
    assert checkpoint.extra == {"continual": {"rows": {}}}
    assert not list(tmp_path.glob(".*.tmp"))


def test_unreadable_checkpoint_names_the_file(tmp_path):
    (tmp_path / CHECKPOINT_FILE).write_bytes(b"half a file")

    with pytest.raises(CheckpointError, match="checkpoint.pt cannot be read"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, "config.json not found"),
        ({"config.json": "{}", "metrics.json": '{"rounds": [], "summary": {"seconds": 1}}'}, "already finished"),
        ({"config.json": "{}", "metrics.json": '{"rounds": [], "summary": {}}'}, "no checkpoint.pt"),
    ],
)
def test_resume_rejects_folder_without_interrupted_run(tmp_path, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)

    result = CliRunner().invoke(cli, ["simulate", "--resume", str(tmp_path)])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
