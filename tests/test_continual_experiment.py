"""ContinualConfig, the capped streams, the experiment's backbone check and the run-directory files.

The stream tests load real Fashion-MNIST. The output tests write hand-made accuracy
matrices to tmp_path and compare the files with values worked out by hand.
"""

import json

import numpy as np
import pytest
import torch

from fedgraft.config import ConfigError
from fedgraft.continual.avalanche_adapter import image_benchmark
from fedgraft.continual.experiment import (
    ContinualResult,
    PreparedStream,
    Stage,
    balanced_subset,
    build_stream,
)
from fedgraft.continual.metrics import summarize
from fedgraft.continual.outputs import (
    comparison_markdown,
    resolve_run_dir,
    write_comparison,
    write_run_directory,
)
from fedgraft.continual.run_config import ContinualConfig, InputKind, max_tasks
from fedgraft.continual.strategy_settings import (
    AGEMSettings,
    EWCSettings,
    GEMSettings,
    ReplaySettings,
    TrainingSettings,
)
from fedgraft.models.registry import create_backbone

# Row i: accuracies after training on task i. Column j: task j's test data.
MATRIX = np.array(
    [
        [0.9, 0.1, 0.0],
        [0.5, 0.8, 0.2],
        [0.4, 0.6, 0.7],
    ]
)
BASELINE = np.array([0.1, 0.1, 0.1])


def _result(strategy: str, matrix: np.ndarray, baseline: np.ndarray, kind=InputKind.FEATURES) -> ContinualResult:
    return ContinualResult(
        strategy=strategy,
        input_kind=kind,
        matrix=matrix,
        baseline=baseline,
        summary=summarize(matrix, baseline),
        task_descriptions=tuple(f"classes {2 * index}, {2 * index + 1}" for index in range(len(matrix))),
        stream_seconds=1.25,
        benchmark_seconds=0.5,
    )


# ContinualConfig


def test_default_config_is_valid():
    cfg = ContinualConfig().validate()

    assert (cfg.stream, cfg.num_tasks, cfg.backbone, cfg.image_size) == ("split-fmnist", 5, "efficientnet_lite0", 96)
    assert cfg.input_kind == "features"


def test_settings_for_maps_fields():
    cfg = ContinualConfig(
        strategies=("replay", "ewc", "gem", "agem"),
        num_tasks=4,
        buffer_size=100,
        epochs=3,
        ewc_mode="online",
        ewc_decay_factor=0.5,
    )

    replay = cfg.settings_for("replay")
    ewc = cfg.settings_for("ewc")
    assert isinstance(replay, ReplaySettings)
    assert (replay.mem_size, replay.epochs) == (100, 3)
    assert isinstance(ewc, EWCSettings)
    assert (ewc.mode, ewc.decay_factor) == ("online", 0.5)
    # Episodic memories split the buffer over the tasks: 100 // 4 samples per experience.
    assert cfg.settings_for("gem") == GEMSettings(epochs=3, patterns_per_exp=25)
    assert cfg.settings_for("agem") == AGEMSettings(epochs=3, patterns_per_exp=25)
    assert type(cfg.settings_for("naive")) is TrainingSettings


def test_separate_ewc_ignores_decay_factor():
    settings = ContinualConfig(ewc_decay_factor=0.3).settings_for("ewc")

    assert settings.decay_factor is None
    settings.validate()


def test_max_tasks_per_stream():
    assert max_tasks("split-fmnist") == 10
    assert max_tasks("split-fmnist-task") == 10
    assert max_tasks("shifted-sites-fmnist") == 4
    assert max_tasks("permuted-fmnist") is None


def test_latent_replay_always_uses_features():
    cfg = ContinualConfig(input_kind="images")

    assert cfg.input_kind_of("latent-replay") is InputKind.FEATURES
    assert cfg.input_kind_of("replay") is InputKind.IMAGES


def test_agem_rejects_more_past_tasks_than_samples():
    cfg = ContinualConfig(stream="permuted-fmnist", strategies=("agem",), num_tasks=300, buffer_size=600)

    with pytest.raises(ConfigError, match="gives agem 299 past experiences"):
        cfg.validate()


def test_integer_option_rejects_bool():
    with pytest.raises(ConfigError, match="--epochs is True"):
        ContinualConfig(epochs=True).validate()


# Capped streams


def test_balanced_subset_takes_turns_per_class():
    labels = np.array([0, 0, 0, 1, 1, 2])

    picked = balanced_subset(labels, 4, np.random.default_rng(0))

    assert np.all(np.diff(picked) > 0)
    # One of each class, then a second of classes 0 and 1 until the cap: 0 gets the 4th.
    assert np.bincount(labels[picked], minlength=3).tolist() == [2, 1, 1]
    assert balanced_subset(labels, 10, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4, 5]


def test_build_stream_caps_each_experience():
    cfg = ContinualConfig(num_tasks=3, train_samples_per_task=60, test_samples_per_task=30)

    stream = build_stream(cfg)

    assert [len(e.train) for e in stream] == [60, 60, 60]
    assert [len(e.test) for e in stream] == [30, 30, 30]
    # The 10 classes split into groups of 4, 3 and 3, each balanced within one image.
    for experience in stream:
        counts = np.bincount(experience.train.labels, minlength=10)[list(experience.classes)]
        assert counts.max() - counts.min() <= 1
    assert sorted(label for e in stream for label in e.classes) == list(range(10))


def test_build_stream_seeded():
    cfg = ContinualConfig(stream="rotated-fmnist", num_tasks=2, train_samples_per_task=20, test_samples_per_task=10)

    first = build_stream(cfg)
    again = build_stream(cfg)

    for left, right in zip(first, again):
        assert np.array_equal(left.train.images, right.train.images)
        assert np.array_equal(left.test.labels, right.test.labels)
    assert [e.description for e in first] == ["rotated:0", "rotated:90"]


def test_backbone_change_is_detected():
    cfg = ContinualConfig(num_tasks=2, train_samples_per_task=10, test_samples_per_task=10)
    backbone = create_backbone("small_cnn", "random")
    prepared = PreparedStream(cfg, build_stream(cfg), backbone)
    prepared.check_backbone_unchanged("naive")

    # A BatchNorm forward pass in train mode updates the running statistics.
    backbone.train()
    backbone(torch.randn(2, 3, 32, 32))

    with pytest.raises(RuntimeError, match="strategy 'naive' changed the frozen backbone small_cnn"):
        prepared.check_backbone_unchanged("naive")


# Run-directory files


def test_run_directory_files_by_hand(tmp_path):
    cfg = ContinualConfig(num_tasks=3, seed=4)

    write_run_directory(_result("ewc", MATRIX, BASELINE), cfg, tmp_path)

    assert (tmp_path / "matrix.csv").read_text() == (
        "trained through,task 0,task 1,task 2\n"
        "after task 0,0.900000,0.100000,0.000000\n"
        "after task 1,0.500000,0.800000,0.200000\n"
        "after task 2,0.400000,0.600000,0.700000\n"
    )
    matrix = json.loads((tmp_path / "matrix.json").read_text())
    assert matrix["matrix"] == MATRIX.tolist()
    assert matrix["tasks"] == ["classes 0, 1", "classes 2, 3", "classes 4, 5"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # ACC = (0.4 + 0.6 + 0.7) / 3. BWT = ((0.4 - 0.9) + (0.6 - 0.8)) / 2.
    # FWT = ((0.1 - 0.1) + (0.2 - 0.1)) / 2. Forgetting: task 0 max(0.9, 0.5) - 0.4 = 0.5,
    # task 1 0.8 - 0.6 = 0.2, mean 0.35.
    assert summary["average_accuracy"] == pytest.approx(1.7 / 3)
    assert summary["backward_transfer"] == pytest.approx(-0.35)
    assert summary["forward_transfer"] == pytest.approx(0.05)
    assert summary["average_forgetting"] == pytest.approx(0.35)
    assert summary["forgetting_per_task"][:2] == pytest.approx([0.5, 0.2])
    assert summary["forgetting_per_task"][2] is None
    assert summary["seconds"] == {"stream": 1.25, "benchmark": 0.5}
    assert summary["config"]["seed"] == 4
    assert summary["strategy"] == "ewc"


def test_single_task_metrics_are_null(tmp_path):
    cfg = ContinualConfig(num_tasks=1)
    result = _result("naive", np.array([[0.75]]), np.array([0.1]))

    write_comparison([result, _result("replay", np.array([[0.5]]), np.array([0.1]))], cfg, tmp_path)

    summary = json.loads((tmp_path / "naive" / "summary.json").read_text())
    for key in ("backward_transfer", "forward_transfer", "average_forgetting"):
        assert summary[key] is None, key
    assert summary["forgetting_per_task"] == [None]
    assert "| naive | features | 0.750 | n/a | n/a | n/a | 1.2 |" in (tmp_path / "comparison.md").read_text()


def test_comparison_markdown_rows():
    cfg = ContinualConfig(num_tasks=3, seed=1)
    results = [_result("ewc", MATRIX, BASELINE), _result("replay", MATRIX, BASELINE, InputKind.IMAGES)]

    lines = comparison_markdown(results, cfg).splitlines()

    assert lines[0] == "# split-fmnist, 3 tasks, seed 1"
    assert lines[4] == "| ewc | features | 0.567 | 0.350 | -0.350 | 0.050 | 1.2 |"
    assert lines[5] == "| replay | images | 0.567 | 0.350 | -0.350 | 0.050 | 1.2 |"


def test_comparison_files_and_folders(tmp_path):
    cfg = ContinualConfig(num_tasks=3)

    write_comparison([_result("ewc", MATRIX, BASELINE), _result("lwf", MATRIX, BASELINE)], cfg, tmp_path)

    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "comparison.json",
        "comparison.md",
        "comparison.png",
        "ewc",
        "lwf",
    ]
    payload = json.loads((tmp_path / "comparison.json").read_text())
    assert [entry["strategy"] for entry in payload["strategies"]] == ["ewc", "lwf"]
    assert payload["strategies"][0]["average_forgetting"] == pytest.approx(0.35)


def test_resolve_run_dir_names(tmp_path):
    single = ContinualConfig(strategies=("ewc",), output_dir=str(tmp_path))
    several = ContinualConfig(strategies=("ewc", "lwf"), output_dir=str(tmp_path))
    exact = ContinualConfig(run_dir=str(tmp_path / "here"))

    assert resolve_run_dir(single).name.endswith("-split-fmnist-ewc")
    assert resolve_run_dir(several).name.endswith("-split-fmnist-comparison")
    assert resolve_run_dir(exact) == (tmp_path / "here").resolve()


# Benchmarks built by the experiment


def test_image_benchmark_preprocess_on_load_matches_eager():
    cfg = ContinualConfig(num_tasks=2, train_samples_per_task=8, test_samples_per_task=4)
    stream = build_stream(cfg)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)

    eager = image_benchmark(stream, 32, mean, std)
    lazy = image_benchmark(stream, 32, mean, std, preprocess_on_load=True)

    for eager_exp, lazy_exp in zip(eager.train_stream, lazy.train_stream):
        assert isinstance(lazy_exp.dataset[0][0], torch.Tensor)
        for index in range(len(eager_exp.dataset)):
            eager_item, lazy_item = eager_exp.dataset[index], lazy_exp.dataset[index]
            assert torch.allclose(eager_item[0], lazy_item[0], atol=1e-6)
            assert eager_item[1:] == lazy_item[1:]


def test_feature_benchmark_reports_progress(tmp_path):
    cfg = ContinualConfig(
        num_tasks=2, train_samples_per_task=8, test_samples_per_task=4, cache_dir=str(tmp_path), image_size=32
    )
    prepared = PreparedStream(cfg, build_stream(cfg), create_backbone("small_cnn", "random"))
    updates = []

    benchmark, seconds = prepared.benchmark(InputKind.FEATURES, updates.append)
    again, _ = prepared.benchmark(InputKind.FEATURES, updates.append)

    assert again is benchmark
    assert seconds > 0.0
    done = [update.done for update in updates]
    assert all(update.stage is Stage.FEATURES and update.total == 24 for update in updates)
    assert done == sorted(done)
    assert done[-1] == 24
    # One update after each of the 4 splits, plus the ones during the backbone's passes.
    assert {8, 12, 20, 24} <= set(done)
