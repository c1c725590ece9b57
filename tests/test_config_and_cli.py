"""RunConfig, its Flower run-config form, and the CLI's rejection of bad input (exit code 2)."""

import gzip
import struct
import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fedgraft.cli import cli
from fedgraft.config import ConfigError, RunConfig

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_run_config_equals_defaults():
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())

    assert pyproject["tool"]["flwr"]["app"]["config"] == RunConfig().to_run_config()


def test_run_config_round_trip():
    cfg = RunConfig(num_clients=4, alpha=0.1, strategy="krum", weights="random")

    assert RunConfig.from_run_config(cfg.to_run_config()) == cfg


def test_run_config_coerces_flower_types():
    cfg = RunConfig.from_run_config({"rounds": 3.0, "alpha": 1, "seed": "7"})

    assert (cfg.rounds, cfg.alpha, cfg.seed) == (3, 1.0, 7)


def test_run_config_rejects_wrong_type():
    with pytest.raises(ConfigError, match="rounds is 'many', expected a int"):
        RunConfig.from_run_config({"rounds": "many"})


def test_defaults_are_valid():
    RunConfig().validate()


def _simulate(*args: str):
    return CliRunner().invoke(cli, ["simulate", *args])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backbone", "alexnet"], "--backbone is 'alexnet', expected one of:"),
        (["--strategy", "fedfoo"], "--strategy is 'fedfoo', expected one of: fedavg"),
        (["--alpha", "0"], "--alpha is 0.0, expected a Dirichlet concentration > 0"),
        (["--alpha", "-1"], "--alpha is -1.0"),
        (["--num-clients", "0"], "--num-clients is 0, expected an integer >= 1"),
        (["--strategy", "krum", "--num-clients", "3", "--num-malicious-nodes", "1"],
         "--strategy krum needs at least 5 nodes per round"),
        (["--mode", "frozen"], "--mode is 'frozen', expected one of: feature-extraction, fine-tune, full"),
        (["--weights", "/no/such/weights.pth"], "--weights is '/no/such/weights.pth'"),
        (["--image-size", "8"], "--image-size is 8"),
        (["--fraction-train", "0"], "--fraction-train is 0.0"),
        (["--data-dir", "/no/such/folder"], "/no/such/folder"),
    ],
)
def test_simulate_rejects_bad_option_with_exit_2(args, message):
    result = _simulate(*args)

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_simulate_rejects_non_integer_option():
    result = _simulate("--rounds", "ten")

    assert result.exit_code == 2
    assert "'ten' is not a valid integer" in result.output


def _write_idx(folder: Path, prefix: str, count: int) -> None:
    images = np.zeros((count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
    with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as handle:
        handle.write(struct.pack(">II", 2049, count) + labels.tobytes())


def test_simulate_rejects_more_clients_than_samples(tmp_path):
    _write_idx(tmp_path, "train", 5)
    _write_idx(tmp_path, "t10k", 5)

    result = _simulate("--data-dir", str(tmp_path), "--num-clients", "6")

    assert result.exit_code == 2
    assert "--num-clients 6 is more than the 5 training samples" in result.output


def test_simulate_rejects_too_many_trainable_blocks():
    result = _simulate("--mode", "fine-tune", "--trainable-blocks", "99")

    assert result.exit_code == 2
    assert "99" in result.output


def test_config_file_values_and_unknown_key(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('strategy = "fedfoo"\n')
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("roundz = 3\n")

    from_file = _simulate("--config", str(good))
    overridden = _simulate("--config", str(good), "--strategy", "fedbar")
    rejected = _simulate("--config", str(unknown))

    assert from_file.exit_code == 2
    assert "--strategy is 'fedfoo'" in from_file.output
    assert "--strategy is 'fedbar'" in overridden.output
    assert rejected.exit_code == 2
    assert "unknown key 'roundz'" in rejected.output


def test_report_rejects_folder_without_run(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])

    assert result.exit_code == 2
    assert "metrics.json not found" in result.output
