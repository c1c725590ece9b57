"""Federated continual runs end to end on Flower's simulation engine, from both entry points.

3 nodes meet 3 tasks of split Fashion-MNIST, 2 rounds each, with the real EfficientNet-Lite0
weights at 32 pixels. The naive run goes through `fedgraft simulate`, the replay run through
`flwr run .` with the same settings as run config. Each starts its own SuperLink on
127.0.0.1 and stops it afterwards.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedgraft.server.local_superlink import FEDERATION, LocalSuperLink, format_run_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 600
NUM_TASKS = 3
ROUNDS_PER_TASK = 2
SETTINGS = {
    "num-clients": 3, "stream": "split-fmnist", "num-tasks": NUM_TASKS, "rounds-per-task": ROUNDS_PER_TASK,
    "max-samples-per-client": 100, "test-samples": 600, "image-size": 32, "buffer-size": 60,
    "learning-rate": 0.01, "local-epochs": 5, "seed": 0,
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("node-cache")


@pytest.fixture(scope="module")
def naive_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "naive"
    options = [f"--{key}={value}" for key, value in {**SETTINGS, "cl-strategy": "naive"}.items()]
    command = [sys.executable, "-m", "fedgraft.cli", "simulate", *options,
               "--run-dir", str(run_dir), "--cache-dir", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory, cache_dir):
    work = tmp_path_factory.mktemp("flwr-run")
    run_dir = work / "replay"
    run_config = {**SETTINGS, "cl-strategy": "replay", "run-dir": str(run_dir), "cache-dir": str(cache_dir)}
    with LocalSuperLink(work / "superlink") as link:
        result = subprocess.run(
            ["flwr", "run", ".", FEDERATION, "--stream", "--run-config", format_run_config(run_config),
             "--federation-config", f"num-supernodes={SETTINGS['num-clients']}"],
            cwd=REPO, env={**link.env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def read(run_dir: Path, name: str) -> dict:
    return json.loads((run_dir / name).read_text())


@pytest.mark.parametrize("run", ["naive_run", "replay_run"])
def test_run_directory_holds_continual_outputs(run, request):
    run_dir = request.getfixturevalue(run)

    for name in ("matrix.json", "matrix.csv", "summary.json", "accuracy_matrix.png", "task_accuracy.png",
                 "task-curves.json", "task-curves.png", "node-forgetting.json", "metrics.json",
                 "model.safetensors"):
        assert (run_dir / name).is_file(), name
    matrix = read(run_dir, "matrix.json")
    assert len(matrix["matrix"]) == NUM_TASKS
    assert all(len(row) == NUM_TASKS for row in matrix["matrix"])
    assert len(matrix["baseline"]) == NUM_TASKS


def test_curves_and_bytes_cover_every_round(naive_run):
    curves = read(naive_run, "task-curves.json")
    rounds = read(naive_run, "metrics.json")["rounds"]

    assert [entry["round"] for entry in curves["rounds"]] == list(range(NUM_TASKS * ROUNDS_PER_TASK + 1))
    assert curves["task_end_rounds"] == [2, 4, 6]
    assert all(len(entry["accuracy"]) == NUM_TASKS for entry in curves["rounds"])
    assert all(r["bytes_sent"] > 0 and r["bytes_received"] > 0 for r in rounds[1:])


def test_forgetting_computed_for_federation_and_nodes(naive_run):
    summary = read(naive_run, "metrics.json")["summary"]["continual"]
    nodes = read(naive_run, "node-forgetting.json")["nodes"]

    assert summary["average_forgetting"] is not None
    assert summary["backward_transfer"] is not None
    assert summary["forward_transfer"] is not None
    assert sorted(nodes) == ["partition 0", "partition 1", "partition 2"]
    assert all(entry["average_forgetting"] is not None for entry in nodes.values())


def test_naive_forgets_what_it_learned(naive_run):
    matrix = read(naive_run, "matrix.json")["matrix"]

    assert matrix[0][0] > 0.5
    assert matrix[-1][0] < matrix[0][0] - 0.3


def test_replay_forgets_less_than_naive(naive_run, replay_run):
    naive = read(naive_run, "metrics.json")["summary"]["continual"]
    replay = read(replay_run, "metrics.json")["summary"]["continual"]

    assert replay["average_forgetting"] < naive["average_forgetting"] - 0.2
    assert replay["average_accuracy"] > naive["average_accuracy"] + 0.1


def test_replay_state_stays_on_nodes(replay_run, cache_dir):
    # Each run keeps its own folder per node: one file per task.
    run_folders = sorted((cache_dir / "continual-state").glob("partition-*/run-*"))

    assert len(run_folders) == 3 * 2  # 3 nodes, the naive and the replay run
    assert all(sorted(f.name for f in folder.iterdir()) == ["task-0.pt", "task-1.pt", "task-2.pt"]
               for folder in run_folders)
    assert not list(replay_run.glob("**/task-*.pt"))
