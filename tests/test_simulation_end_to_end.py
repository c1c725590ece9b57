"""End to end on Flower's simulation engine: real Fashion-MNIST, real ImageNet weights.

Each run starts its own SuperLink on a free 127.0.0.1 port and stops it afterwards.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

from fedgraft.models.registry import create_backbone
from fedgraft.server.local_superlink import FEDERATION, LocalSuperLink, format_run_config

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
FEDGRAFT = [sys.executable, "-m", "fedgraft.cli"]
RUN_TIMEOUT_S = 600
NUM_CLIENTS = 3
HEAD_BYTES = (1280 * 10 + 10) * 4  # float32 linear head for 1280 features and 10 classes

SMALL_RUN = [
    "--num-clients", str(NUM_CLIENTS), "--rounds", "2", "--max-samples-per-client", "300",
    "--test-samples", "500", "--local-epochs", "3", "--learning-rate", "0.003", "--seed", "3",
]


def simulate(run_dir: Path, cache_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [*FEDGRAFT, "simulate", *SMALL_RUN, "--run-dir", str(run_dir), "--cache-dir", str(cache_dir), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def model_hash(run_dir: Path) -> str:
    with safe_open(run_dir / "model.safetensors", "pt") as handle:
        return handle.metadata()["state-sha256"]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("node-cache")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, cache_dir):
    run_dir = tmp_path_factory.mktemp("runs") / "first"
    result = simulate(run_dir, cache_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, result


@pytest.fixture(scope="module")
def second_run(tmp_path_factory, cache_dir, first_run):
    run_dir = tmp_path_factory.mktemp("runs") / "second"
    features_before = sorted((cache_dir / "features").iterdir())
    result = simulate(run_dir, cache_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir, features_before


def test_accuracy_well_above_chance(first_run):
    run_dir, _ = first_run
    summary = metrics_of(run_dir)["summary"]

    assert summary["final_test_accuracy"] > 0.6
    assert summary["final_val_accuracy"] > 0.6


def test_run_directory_holds_its_files(first_run):
    run_dir, _ = first_run
    config = json.loads((run_dir / "config.json").read_text())
    rounds = metrics_of(run_dir)["rounds"]

    assert config["num-clients"] == NUM_CLIENTS
    assert [r["round"] for r in rounds] == [0, 1, 2]
    assert (run_dir / "metrics.png").read_bytes()[:4] == b"\x89PNG"
    with safe_open(run_dir / "model.safetensors", "pt") as handle:
        assert sorted(handle.keys()) == ["head.fc.bias", "head.fc.weight"]
        assert handle.metadata()["backbone"] == "efficientnet_lite0"


def test_backbone_sent_once_then_only_head_bytes(first_run):
    run_dir, _ = first_run
    rounds = metrics_of(run_dir)["rounds"]
    backbone_bytes = rounds[0]["bytes_sent"]

    backbone = create_backbone("efficientnet_lite0", "random").state_dict()
    raw_backbone_bytes = sum(t.numel() * t.element_size() for t in backbone.values())

    # Round 0 carries the whole backbone, once, to each of the nodes.
    assert NUM_CLIENTS * raw_backbone_bytes <= backbone_bytes <= 1.01 * NUM_CLIENTS * raw_backbone_bytes
    for record in rounds[1:]:
        assert record["nodes_trained"] == NUM_CLIENTS
        assert HEAD_BYTES <= record["train_bytes_sent_per_node"] <= 1.05 * HEAD_BYTES
        assert HEAD_BYTES <= record["train_bytes_received_per_node"] <= 1.05 * HEAD_BYTES


def test_per_round_table_printed(first_run):
    _, result = first_run
    output = result.stdout + result.stderr

    assert "round | train loss | val acc | test acc" in output
    assert "final test accuracy" in output


def test_second_run_uses_node_caches(second_run):
    run_dir, features_before = second_run
    metrics = metrics_of(run_dir)

    assert metrics["summary"]["backbone_nodes_cached"] == NUM_CLIENTS
    assert metrics["rounds"][0]["bytes_sent"] == 0
    # Every client's and the server's features came from the cache: no new entries.
    assert sorted(features_before[0].parent.iterdir()) == features_before


def test_same_seed_gives_identical_head(first_run, second_run):
    assert model_hash(first_run[0]) == model_hash(second_run[0])


def test_report_prints_summary(first_run):
    run_dir, _ = first_run
    result = subprocess.run([*FEDGRAFT, "report", str(run_dir)], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0
    assert "final test accuracy" in result.stdout


def test_flwr_run_smoke(tmp_path, cache_dir):
    run_dir = tmp_path / "flwr-run"
    run_config = {
        "num-clients": 2, "rounds": 1, "max-samples-per-client": 100, "test-samples": 200,
        "run-dir": str(run_dir), "cache-dir": str(cache_dir),
    }
    with LocalSuperLink(tmp_path / "superlink") as link:
        result = subprocess.run(
            ["flwr", "run", ".", FEDERATION, "--stream", "--run-config", format_run_config(run_config),
             "--federation-config", "num-supernodes=2"],
            cwd=REPO, env={**link.env(), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
        )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics = metrics_of(run_dir)
    assert [r["round"] for r in metrics["rounds"]] == [0, 1]
    assert metrics["summary"]["final_test_accuracy"] > 0.2
