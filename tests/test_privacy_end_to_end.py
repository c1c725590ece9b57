"""Client-side DP and a NaN-poisoned node together, on Flower's simulation engine.

One small `fedgraft simulate` run: every node clips in Flower's adaptive clipping mod, the
server adds noise, and partition 0 sends NaN, which the guards must reject every round.
"""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 600
ROUNDS = 2


def test_client_dp_run_rejects_nan_node(tmp_path):
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "fedgraft.cli", "simulate",
        "--num-clients", "3", "--rounds", str(ROUNDS), "--max-samples-per-client", "100",
        "--test-samples", "200", "--local-epochs", "1", "--seed", "3",
        "--dp", "client-adaptive", "--dp-noise-multiplier", "0.05",
        "--poisoned-nodes", "0", "--poison", "nan",
        "--run-dir", str(run_dir), "--cache-dir", str(tmp_path / "cache"),
    ]

    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rounds = json.loads((run_dir / "metrics.json").read_text())["rounds"][1:]
    assert len(rounds) == ROUNDS
    for record in rounds:
        assert record["nodes_trained"] == 2
        assert [entry["reason"] for entry in record["rejected"]] == ["parameter 'head.fc.weight' contains NaN or Inf"]
        assert record["test_accuracy"] is not None
