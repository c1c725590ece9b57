"""Faults in a deployment on 127.0.0.1: nodes that die, come back, or bring bad data.

Each test starts one real `flower-superlink` with TLS and node authentication and real
`flower-supernode` processes (see tests/test_deployment.py for the happy path).

- A federated continual run goes on when a node is killed mid-round. The node restarts
  with the same key and state folder, takes part again, and still has its replay buffer.
- A node whose data path does not exist replies with an error each round. The server
  records the node and the reason, and trains on the other nodes.
"""

import json
import signal
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from fedgraft.config import RunConfig
from fedgraft.continual.federated_config import plan_continual_run
from fedgraft.continual.federated_data import federated_stream
from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.server.certificates import create_certificates
from fedgraft.server.checkpoint import CheckpointError, load_checkpoint
from fedgraft.server.local_deployment import LocalDeployment

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 900
ROUND_TIMEOUT_S = 30.0

CONTINUAL_RUN = {
    "num-clients": 3, "min-nodes": 2, "stream": "split-fmnist", "num-tasks": 2, "rounds-per-task": 3,
    "cl-strategy": "replay", "buffer-size": 20, "max-samples-per-client": 60, "test-samples": 200,
    "image-size": 32, "local-epochs": 2, "learning-rate": 0.01, "round-timeout": ROUND_TIMEOUT_S, "seed": 2,
}


def checkpoint_round(run_dir: Path) -> int:
    try:
        return load_checkpoint(run_dir).round
    except CheckpointError:
        return -1


def wait_for_checkpoint(run_dir: Path, server_round: int, run: threading.Thread, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while checkpoint_round(run_dir) < server_round:
        assert run.is_alive(), f"the run ended before round {server_round}"
        assert time.monotonic() < deadline, f"no checkpoint of round {server_round} within {timeout:.0f} s"
        time.sleep(0.5)


def kill_tree(pid: int) -> None:
    """Kill a process and its children with SIGKILL, as a crash or power loss would."""
    root = psutil.Process(pid)
    family = [root, *root.children(recursive=True)]
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)


def buffer_labels(state_file: Path) -> set[int]:
    payload = torch.load(state_file, weights_only=False)
    (replay,) = [state for key, state in payload["plugins"].items() if key.endswith("ReplayPlugin")]
    return {int(label) for label in replay["storage_policy"].buffer.targets}


@pytest.fixture()
def certificates(tmp_path):
    return create_certificates(tmp_path / "certs", node_keys=3)


def test_killed_node_rejoins_with_its_state(tmp_path, certificates):
    run_dir = tmp_path / "run"
    state_dirs = [tmp_path / f"state-{index}" for index in range(3)]
    run_config = {**CONTINUAL_RUN, "run-dir": str(run_dir), "cache-dir": str(tmp_path / "server-cache")}
    result: dict = {}

    with LocalDeployment(tmp_path / "work", certificates) as deployment:
        def node_config(index: int) -> dict:
            return {"partition-id": index, "state-dir": str(state_dirs[index]),
                    "cache-dir": str(tmp_path / f"node-cache-{index}")}

        for index in range(3):
            deployment.register_node(certificates.node_public_keys[index])
            deployment.start_supernode(f"node-{index}", certificates.node_private_keys[index], node_config(index))
        deployment.wait_for_online_nodes(3, timeout=120)

        run = threading.Thread(
            target=lambda: result.update(done=deployment.run_app(REPO, run_config, timeout=RUN_TIMEOUT_S))
        )
        run.start()
        try:
            # Kill node 2 as round 2 starts, then restart it once task 0 has ended for the federation.
            wait_for_checkpoint(run_dir, 1, run, timeout=RUN_TIMEOUT_S)
            kill_tree(deployment.nodes[2].pid)
            wait_for_checkpoint(run_dir, 3, run, timeout=RUN_TIMEOUT_S)
            deployment.start_supernode("node-2-restarted", certificates.node_private_keys[2], node_config(2))
        finally:
            run.join(timeout=RUN_TIMEOUT_S)

    completed = result["done"]
    assert completed.returncode == 0, completed.stdout[-4000:]
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"]
    trained = [record["nodes_trained"] for record in rounds[1:]]
    assert [record["round"] for record in rounds] == list(range(7))
    assert trained[0] == 3
    assert min(trained) == 2  # the rounds without the killed node went on
    assert trained[-1] == 3  # the restarted node took part again

    # The restarted node began task 1 from its task-0 state on disk, buffer included.
    cfg = RunConfig.from_run_config(run_config)
    task_0_classes = set(federated_stream(cfg, plan_continual_run(cfg))[0].classes)
    (run_folder,) = list(state_dirs[2].iterdir())
    assert buffer_labels(run_folder / "task-1.pt") & task_0_classes


def test_node_with_missing_data_is_left_out(tmp_path, certificates):
    train = load_fashion_mnist("train")
    data_paths = []
    for index in range(2):
        path = tmp_path / f"node-{index}.npz"
        chosen = np.random.default_rng(index).choice(len(train.labels), 60, replace=False)
        np.savez(path, x=train.images[chosen], y=train.labels[chosen])
        data_paths.append(path)
    data_paths.append(tmp_path / "no-such-folder")
    run_dir = tmp_path / "run"
    run_config = {
        "num-clients": 3, "rounds": 2, "max-samples-per-client": 60, "test-samples": 200, "image-size": 32,
        "local-epochs": 3, "learning-rate": 0.01, "round-timeout": 120.0, "seed": 1, "run-dir": str(run_dir),
        "cache-dir": str(tmp_path / "server-cache"),
    }

    with LocalDeployment(tmp_path / "work", certificates) as deployment:
        for index, data_path in enumerate(data_paths):
            deployment.register_node(certificates.node_public_keys[index])
            deployment.start_supernode(
                f"node-{index}", certificates.node_private_keys[index],
                {"data-path": str(data_path), "cache-dir": str(tmp_path / f"node-cache-{index}")},
            )
        deployment.wait_for_online_nodes(3, timeout=120)
        completed = deployment.run_app(REPO, run_config, timeout=RUN_TIMEOUT_S)

    assert completed.returncode == 0, completed.stdout[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for record in metrics["rounds"][1:]:
        assert record["nodes_trained"] == 2
        (rejected,) = record["rejected"]
        assert "Node data" in rejected["reason"]
        assert "no-such-folder not found" in rejected["reason"]
    assert metrics["summary"]["final_test_accuracy"] > 0.3
