"""Options of a federated continual run: what is resolved, and what is rejected with exit code 2."""

import pytest
from click.testing import CliRunner

from fedgraft.cli import cli
from fedgraft.config import ConfigError, RunConfig
from fedgraft.continual.federated_config import plan_continual_run
from fedgraft.continual.strategy_settings import ReplaySettings


def test_plan_fills_defaults_from_stream_and_rounds():
    cfg = RunConfig(stream="split-fmnist", rounds=20, cl_strategy="replay", buffer_size=80, local_epochs=3)

    plan = plan_continual_run(cfg)

    assert plan.num_tasks == 5
    assert plan.schedule.rounds_per_task == 4
    assert plan.schedule.total_rounds == 20
    settings = plan.continual.settings_for("replay")
    assert isinstance(settings, ReplaySettings)
    assert settings.mem_size == 80
    assert settings.epochs == 3


def test_rounds_per_task_and_lags_set_the_length():
    cfg = RunConfig(stream="split-fmnist", num_tasks=3, rounds_per_task=2, task_lags="0,1,3")

    schedule = plan_continual_run(cfg).schedule

    assert schedule.total_rounds == 3 * 2 + 3
    assert schedule.lags == (0, 1, 3)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cl_strategy": "gdumb"}, "gdumb resets the model before every experience"),
        ({"cl_strategy": "icarl"}, "--cl-strategy is 'icarl'"),
        ({"rounds": 3}, "--rounds 3 is fewer than the 5 tasks"),
        ({"mode": "full"}, "--mode full trains the whole backbone"),
        ({"cache_features": False}, "Leave the feature cache on"),
        ({"task_lags": "0,x"}, "--task-lags entry 'x'"),
        ({"num_tasks": 11}, "but split-fmnist has only 10 classes"),
        ({"buffer_size": -1}, "--buffer-size is -1"),
    ],
)
def test_plan_rejects_bad_combination(options, message):
    cfg = RunConfig(stream="split-fmnist", **options)

    with pytest.raises(ConfigError, match=message):
        plan_continual_run(cfg)


def test_plan_rejects_unknown_stream():
    with pytest.raises(ConfigError, match="--stream is 'split-cifar', expected one of: split-fmnist"):
        plan_continual_run(RunConfig(stream="split-cifar"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rounds", "2"], "--rounds 2 is fewer than the 5 tasks"),
        (["--cl-strategy", "gdumb"], "gdumb resets the model"),
        (["--mode", "full"], "--mode full trains the whole backbone"),
    ],
)
def test_simulate_rejects_bad_continual_run_with_exit_2(args, message):
    result = CliRunner().invoke(cli, ["simulate", "--stream", "split-fmnist", *args])

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_single_task_run_ignores_continual_options():
    RunConfig(rounds=2, cl_strategy="gdumb").validate()
