"""The `fedgraft continual` and `fedgraft compare` commands, run through click's CliRunner.

The runs use real Fashion-MNIST: 3 tasks with 60 training and 30 test images each,
EfficientNet-Lite0 at 32 px, 2 epochs, and a feature cache in tmp_path.
"""

import csv
import json

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fedgraft.continual.cli import compare_command, continual_command
from fedgraft.continual.outputs import COMPARISON_FILES, RUN_FILES
from fedgraft.continual.run_config import STRATEGY_NAMES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's tiny tensors on one thread, which is faster when the CPUs are busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One feature cache for the module, so the backbone runs over each split once."""
    return tmp_path_factory.mktemp("feature-cache")


def _tiny(cache_dir, run_dir, epochs: int = 2) -> list[str]:
    return [
        "--num-tasks", "3",
        "--train-samples-per-task", "60",
        "--test-samples-per-task", "30",
        "--image-size", "32",
        "--epochs", str(epochs),
        "--cache-dir", str(cache_dir),
        "--run-dir", str(run_dir),
    ]


def _invoke(command, *args: str):
    result = CliRunner().invoke(command, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_continual_writes_every_file(cache_dir, tmp_path):
    run_dir = tmp_path / "run"

    result = _invoke(continual_command, "--strategy", "replay", "--buffer-size", "30", *_tiny(cache_dir, run_dir))

    assert result.exit_code == 0, result.output
    assert f"run directory written to {run_dir}" in result.output
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert not any((run_dir / name).exists() for name in COMPARISON_FILES)
    # No temporary file of an atomic write is left behind.
    assert sorted(path.name for path in run_dir.iterdir()) == sorted(RUN_FILES)

    matrix = json.loads((run_dir / "matrix.json").read_text())
    assert matrix["row_labels"] == ["after task 0", "after task 1", "after task 2"]
    assert matrix["column_labels"] == ["task 0", "task 1", "task 2"]
    assert len(matrix["tasks"]) == 3
    assert all(len(row) == 3 for row in matrix["matrix"])
    assert len(matrix["baseline"]) == 3

    with open(run_dir / "matrix.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["trained through", "task 0", "task 1", "task 2"]
    assert [row[0] for row in rows[1:]] == ["after task 0", "after task 1", "after task 2"]
    table = np.array([[float(value) for value in row[1:]] for row in rows[1:]])
    assert np.allclose(table, matrix["matrix"], rtol=0.0, atol=1e-6)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["strategy"] == "replay"
    assert summary["input_kind"] == "features"
    assert summary["average_accuracy"] == pytest.approx(sum(matrix["matrix"][2]) / 3)
    assert summary["forgetting_per_task"][2] is None
    for key in ("backward_transfer", "forward_transfer", "average_forgetting"):
        assert isinstance(summary[key], float), key
    assert summary["seconds"]["stream"] > 0.0
    assert summary["config"]["buffer_size"] == 30
    for name in ("accuracy_matrix.png", "task_accuracy.png"):
        assert (run_dir / name).read_bytes().startswith(PNG_SIGNATURE), name


def test_compare_writes_table_and_folders(cache_dir, tmp_path):
    run_dir = tmp_path / "comparison"
    strategies = "replay,latent-replay"

    result = _invoke(
        compare_command,
        "--strategy", strategies,
        "--input-kind", "images",
        "--buffer-size", "30",
        "--learning-rate", "0.01",
        *_tiny(cache_dir, run_dir, epochs=10),
    )

    assert result.exit_code == 0, result.output
    assert f"comparison written to {run_dir}" in result.output
    for name in COMPARISON_FILES:
        assert (run_dir / name).is_file(), name
    for strategy in strategies.split(","):
        for name in RUN_FILES:
            assert (run_dir / strategy / name).is_file(), f"{strategy}/{name}"
    assert (run_dir / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)

    table = (run_dir / "comparison.md").read_text().splitlines()
    assert table[2] == "| strategy | input | average accuracy | forgetting | BWT | FWT | seconds |"
    rows = [line for line in table if line.startswith("| replay") or line.startswith("| latent-replay")]
    assert [row.split(" | ")[:2] for row in rows] == [["| replay", "images"], ["| latent-replay", "features"]]

    # Image replay runs the frozen backbone on every mini-batch, latent replay reads the
    # same backbone's cached output, and both start from the same seed, so they train the
    # same head. Float rounding may flip a few of the 30 test predictions per task.
    image = np.array(json.loads((run_dir / "replay" / "matrix.json").read_text())["matrix"])
    latent = np.array(json.loads((run_dir / "latent-replay" / "matrix.json").read_text())["matrix"])
    assert np.abs(image - latent).max() <= 2 / 30 + 1e-9
    # 10 epochs at learning rate 0.01 learn each task, so the agreement is not all zeros.
    assert np.all(np.diag(image) > 0.5), image


def test_continual_several_strategies_is_comparison(cache_dir, tmp_path):
    run_dir = tmp_path / "run"

    result = _invoke(continual_command, "--strategy", "naive, ewc", *_tiny(cache_dir, run_dir))

    assert result.exit_code == 0, result.output
    assert (run_dir / "comparison.md").is_file()
    assert (run_dir / "naive" / "summary.json").is_file()
    assert (run_dir / "ewc" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "icarl"], "--strategy is 'icarl', expected one of: naive, cumulative, replay"),
        (["--strategy", "naive,icarl"], "--strategy is 'icarl'"),
        (["--strategy", ","], "--strategy is empty"),
        (["--strategy", "ewc,ewc"], "--strategy names ewc more than once"),
        (["--stream", "split-mnist"], "--stream is 'split-mnist', expected one of: split-fmnist, split-fmnist-task"),
        (["--num-tasks", "11"], "--num-tasks is 11, but split-fmnist has only 10 classes"),
        (["--stream", "shifted-sites-fmnist", "--num-tasks", "5"], "shifted-sites-fmnist has only 4 sites"),
        (["--num-tasks", "0"], "--num-tasks is 0, expected an integer >= 1"),
        (["--buffer-size", "-1"], "--buffer-size is -1, expected an integer >= 0"),
        (["--strategy", "gdumb", "--buffer-size", "0"], "gdumb trains only on its buffer"),
        (["--strategy", "gem", "--buffer-size", "3"], "leaves gem no sample per experience"),
        (["--ewc-mode", "offline"], "--ewc-mode is 'offline', expected one of: separate, online"),
        (["--ewc-decay-factor", "1.5"], "--ewc-decay-factor is 1.5, expected a number in [0, 1]"),
        (["--lwf-temperature", "0"], "--lwf-temperature is 0.0, expected a number > 0"),
        (["--learning-rate", "nan"], "--learning-rate is nan"),
        (["--epochs", "0"], "--epochs is 0, expected an integer >= 1"),
        (["--input-kind", "pixels"], "--input-kind is 'pixels', expected one of: features, images"),
        (["--backbone", "alexnet"], "--backbone is 'alexnet', expected one of:"),
        (["--weights", "/no/such/weights.pth"], "--weights is '/no/such/weights.pth'"),
        (["--image-size", "8"], "--image-size is 8, expected an integer >= 16"),
        (["--train-samples-per-task", "-5"], "--train-samples-per-task is -5"),
        (["--data-dir", "/no/such/folder"], "--data-dir is '/no/such/folder', which is not a folder"),
    ],
)
def test_continual_rejects_bad_input_with_exit_2(tmp_path, args, message):
    run_dir = tmp_path / "run"

    result = CliRunner().invoke(continual_command, [*args, "--run-dir", str(run_dir)])

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert not run_dir.exists()


def test_continual_rejects_non_integer_option():
    result = CliRunner().invoke(continual_command, ["--num-tasks", "five"])

    assert result.exit_code == 2
    assert "'five' is not a valid integer" in result.output


def test_continual_rejects_backbone_without_imagenet_weights(tmp_path):
    # Only building the backbone finds this, which happens after validation but before training.
    run_dir = tmp_path / "run"

    result = CliRunner().invoke(
        continual_command, ["--backbone", "small_cnn", "--run-dir", str(run_dir), *_tiny(tmp_path, run_dir)[:6]]
    )

    assert result.exit_code == 2, result.output
    assert "small_cnn has no ImageNet weights" in result.output
    assert not run_dir.exists()


def test_compare_needs_two_strategies(tmp_path):
    run_dir = tmp_path / "run"

    result = CliRunner().invoke(compare_command, ["--strategy", "replay", "--run-dir", str(run_dir)])

    assert result.exit_code == 2
    assert "compare needs at least 2 strategies" in result.output
    assert not run_dir.exists()


def test_commands_register_under_their_names():
    group = click.Group("fedgraft")
    group.add_command(continual_command)
    group.add_command(compare_command)

    result = CliRunner().invoke(group, ["continual", "--help"])

    assert sorted(group.commands) == ["compare", "continual"]
    assert result.exit_code == 0
    for option in ("--strategy", "--stream", "--buffer-size", "--input-kind", "--run-dir"):
        assert option in result.output, option


def test_strategy_names_match_registry():
    from fedgraft.continual.strategies import STRATEGIES

    assert STRATEGY_NAMES == tuple(STRATEGIES)
