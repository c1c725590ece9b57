"""A task-incremental federated run end to end: `fedgraft simulate --stream split-fmnist-task`.

3 nodes meet the 5 tasks of split Fashion-MNIST (2 classes each, task label = experience
index), 1 round per task, iid within each task, with the real EfficientNet-Lite0 weights at 32 pixels. Head j
only predicts task j's 2 classes, so chance accuracy is 0.5 on every task.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
NUM_TASKS = 5
# iid partitions give every node both classes of a task, so one round of FedAvg learns
# each task. A Dirichlet split can leave a node with only one class of a task.
SETTINGS = {
    "num-clients": 3, "stream": "split-fmnist-task", "num-tasks": NUM_TASKS, "rounds-per-task": 1,
    "partition": "iid", "max-samples-per-client": 60, "test-samples": 250, "image-size": 32,
    "learning-rate": 0.01, "local-epochs": 5, "cl-strategy": "naive", "seed": 0,
}


@pytest.fixture(scope="module")
def task_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "task-incremental"
    cache_dir = tmp_path_factory.mktemp("node-cache")
    options = [f"--{key}={value}" for key, value in SETTINGS.items()]
    command = [sys.executable, "-m", "fedgraft.cli", "simulate", *options,
               "--run-dir", str(run_dir), "--cache-dir", str(cache_dir)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_task_run_uses_one_head_per_task(task_run):
    summary = json.loads((task_run / "metrics.json").read_text())["summary"]["continual"]

    assert summary["head_layout"] == "per-task"
    assert summary["num_tasks"] == NUM_TASKS


def test_task_run_beats_chance_without_forgetting(task_run):
    matrix = json.loads((task_run / "matrix.json").read_text())["matrix"]
    diagonal = [matrix[task][task] for task in range(NUM_TASKS)]
    final = matrix[-1]

    assert min(diagonal) > 0.65
    assert sum(final) / NUM_TASKS > 0.8
    # A naive node trains only the head of its current task on a frozen backbone, so the
    # accuracy on an earlier task stays as it was when that task ended.
    for task in range(NUM_TASKS):
        assert abs(final[task] - diagonal[task]) < 0.02, task
