"""Avalanche benchmarks, the strategy registry and the accuracy-matrix runner.

The strategies train a linear head on cached EfficientNet-Lite0 features (32 px) of real
Fashion-MNIST images: a class-incremental stream of 3 experiences x 2 classes, with 40
training and 20 test images per class. Every run is seeded.
"""

import math

import numpy as np
import pytest
import torch
from avalanche.benchmarks import CLScenario
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import ReplayPlugin

from fedgraft.continual.avalanche_adapter import (
    FeatureHead,
    benchmark_from_tensors,
    feature_benchmark,
    image_benchmark,
)
from fedgraft.continual.metrics import summarize
from fedgraft.continual.runner import evaluate_accuracy, run_stream, untrained_baseline
from fedgraft.continual.strategies import (
    STRATEGIES,
    StrategyError,
    available_strategies,
    create_strategy,
)
from fedgraft.continual.strategy_settings import (
    AGEMSettings,
    EWCSettings,
    GDumbSettings,
    GEMSettings,
    LwFSettings,
    ReplaySettings,
    SISettings,
    TrainingSettings,
)
from fedgraft.continual.streams import StreamError, class_incremental, task_incremental
from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.data.feature_cache import FeatureCache
from fedgraft.models.head import create_head
from fedgraft.models.registry import create_backbone
from fedgraft.models.transfer import TransferModel

# avalanche-lib 0.6's SI plugin triggers a NumPy 2 deprecation warning. Its ReplayPlugin and
# GDumbPlugin also warn that they call a deprecated buffer method, but that warning cannot be
# filtered here, because Avalanche's @deprecated resets the DeprecationWarning filter to "once".
pytestmark = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")

IMAGE_SIZE = 32
CLASSES = (0, 1, 2, 3, 4, 5)
NUM_CLASSES = 10  # the head covers the whole label map, as in a real run
SEED = 0

# A few hundred samples give each experience 2 steps per epoch at batch size 40, so the
# defaults (5 epochs at learning rate 1e-3) would barely move the head. These settings
# let each experience be learned. They are shared by every strategy so that the
# comparisons are fair.
FAST = {"epochs": 10, "batch_size": 40, "learning_rate": 0.01}

# One run per registered strategy, plus the online mode of EWC.
RUNS = {
    "naive": TrainingSettings(**FAST),
    "cumulative": TrainingSettings(**FAST),
    # Two buffer samples per new sample in a mini-batch, because 40 new samples of 2
    # classes against 40 buffer samples of 4 classes bias the head to the new classes.
    "replay": ReplaySettings(**FAST, mem_size=60, batch_size_mem=80),
    "latent-replay": ReplaySettings(**FAST, mem_size=60, batch_size_mem=80),
    "ewc": EWCSettings(**FAST),
    "ewc-online": EWCSettings(**FAST, mode="online", decay_factor=0.9),
    "lwf": LwFSettings(**FAST),
    "si": SISettings(**FAST),
    "gem": GEMSettings(**FAST, patterns_per_exp=20),
    "agem": AGEMSettings(**FAST, patterns_per_exp=40, sample_size=40),
    "gdumb": GDumbSettings(**FAST, mem_size=60),
}


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's torch work on one thread, then restore the previous count.

    The tensors here are tiny (batches of 40 x 1280), so intra-op threads only add
    synchronisation, which costs several times the compute when the CPUs are busy.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def stream():
    """Class-incremental stream of 3 experiences over 6 Fashion-MNIST classes.

    Both splits come from the 10,000-image test file, which loads faster than the
    training file: per class the first 40 images train and the next 20 test.
    """
    source = load_fashion_mnist("test")
    per_class = [np.flatnonzero(source.labels == label) for label in CLASSES]
    train = source.subset(np.sort(np.concatenate([members[:40] for members in per_class])))
    test = source.subset(np.sort(np.concatenate([members[40:60] for members in per_class])))
    return class_incremental(train, test, num_tasks=3, seed=SEED)


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0", "imagenet")


def _transfer_model(backbone) -> TransferModel:
    """Build a feature-extraction transfer model whose head starts from the weights of SEED."""
    torch.manual_seed(SEED)
    head = create_head("linear", backbone.num_features, NUM_CLASSES)
    return TransferModel(backbone, head, "feature-extraction")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return FeatureCache(tmp_path_factory.mktemp("feature-cache"))


@pytest.fixture(scope="module")
def benchmark(stream, backbone, cache):
    return feature_benchmark(stream, _transfer_model(backbone), IMAGE_SIZE, cache=cache)


@pytest.fixture(scope="module")
def run_result(benchmark, backbone):
    """Return (R, baseline, strategy, model) of one run, training each run once per module."""
    results = {}

    def run(key: str):
        if key not in results:
            RNGManager.set_random_seeds(SEED)
            model = FeatureHead(_transfer_model(backbone))
            baseline = untrained_baseline(model, benchmark)
            strategy = create_strategy(key.removesuffix("-online"), model, RUNS[key])
            matrix = run_stream(strategy, benchmark, cross_check=True)
            results[key] = (matrix, baseline, strategy, model)
        return results[key]

    return run


# Avalanche datasets


def test_benchmark_targets_match_stream(benchmark, stream):
    assert len(benchmark.train_stream) == len(benchmark.test_stream) == 3
    for experience, train_exp, test_exp in zip(stream, benchmark.train_stream, benchmark.test_stream):
        assert list(train_exp.dataset.targets) == experience.train.labels.tolist()
        assert list(test_exp.dataset.targets) == experience.test.labels.tolist()
        assert train_exp.current_experience == test_exp.current_experience == experience.index
        assert set(train_exp.classes_in_this_experience) == set(experience.classes)
        assert set(test_exp.classes_in_this_experience) == set(experience.classes)


def test_benchmark_class_incremental_task_labels(benchmark):
    for experience in list(benchmark.train_stream) + list(benchmark.test_stream):
        assert experience.task_label == 0
        assert set(experience.dataset.targets_task_labels) == {0}
        features, label, task_label = experience.dataset[0]
        assert features.shape == (1280,)
        assert task_label == 0


def test_benchmark_task_incremental_task_labels():
    data = load_fashion_mnist("test").subset(np.arange(60))
    stream = task_incremental(data, data, num_tasks=3, seed=None)
    pairs = [(torch.randn(len(e.train), 4), torch.from_numpy(e.train.labels)) for e in stream]

    benchmark = benchmark_from_tensors(pairs, pairs, [e.task_label for e in stream])

    for index, experience in enumerate(benchmark.train_stream):
        assert experience.task_label == index
        assert set(experience.dataset.targets_task_labels) == {index}
        assert experience.dataset[0][2] == index
        assert list(experience.dataset.targets) == stream[index].train.labels.tolist()


def test_feature_benchmark_reads_cache(stream, backbone, cache, benchmark):
    hits_before = cache.hits

    again = feature_benchmark(stream, _transfer_model(backbone), IMAGE_SIZE, cache=cache)

    # Six splits (3 train, 3 test), all computed by the benchmark fixture already.
    assert cache.hits == hits_before + 6
    first = benchmark.train_stream[1].dataset[3][0]
    assert torch.equal(again.train_stream[1].dataset[3][0], first)


def test_image_benchmark_trains_transfer_model():
    data = load_fashion_mnist("test").subset(np.arange(40))
    stream = class_incremental(data, data, num_tasks=2, seed=None)
    cnn = create_backbone("small_cnn", "random")
    torch.manual_seed(SEED)
    model = TransferModel(cnn, create_head("linear", cnn.num_features, NUM_CLASSES), "full")

    benchmark = image_benchmark(stream, IMAGE_SIZE, cnn.input_mean, cnn.input_std)
    strategy = create_strategy("naive", model, TrainingSettings(epochs=1, batch_size=20))
    matrix = run_stream(strategy, benchmark)

    images, label, task_label = benchmark.train_stream[0].dataset[0]
    assert images.shape == (3, IMAGE_SIZE, IMAGE_SIZE)
    assert matrix.shape == (2, 2)


@pytest.mark.parametrize("mode", ["feature-extraction", "fine-tune", "full"])
def test_feature_head_matches_transfer_model(mode):
    cnn = create_backbone("small_cnn", "random")
    torch.manual_seed(SEED)
    model = TransferModel(cnn, create_head("linear", cnn.num_features, NUM_CLASSES), mode)
    model.eval()
    images = torch.randn(4, 3, IMAGE_SIZE, IMAGE_SIZE)

    head = FeatureHead(model)

    assert torch.allclose(head(model.frozen_features(images)), model(images))
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for p in head.parameters()} == trainable


def test_adapter_rejects_unordered_stream(stream, backbone):
    with pytest.raises(StreamError, match="indices 0, 1, 2"):
        feature_benchmark(list(reversed(stream)), _transfer_model(backbone), IMAGE_SIZE)


# Every registered strategy


def test_every_registered_strategy_has_a_run():
    assert set(available_strategies()) == {key.removesuffix("-online") for key in RUNS}


@pytest.mark.parametrize("key", list(RUNS))
def test_strategy_fills_accuracy_matrix(run_result, key):
    matrix, baseline, _, _ = run_result(key)

    assert matrix.shape == (3, 3)
    assert np.all((matrix >= 0.0) & (matrix <= 1.0))
    # Each experience is learned right after training on it. Its test data has 2 classes,
    # so guessing between them would score 0.5.
    assert np.all(np.diag(matrix) > 0.6), np.round(matrix, 2)
    summary = summarize(matrix, baseline)
    assert math.isfinite(summary.forward_transfer)


def test_replay_forgets_less_than_naive(run_result):
    naive = summarize(run_result("naive")[0])
    replay = summarize(run_result("replay")[0])

    # Measured on this stream with seeds 0, 1 and 2: average forgetting 0.70-0.71 for
    # naive and 0.46-0.48 for replay, average accuracy 0.51 and 0.64-0.66.
    assert replay.average_forgetting < naive.average_forgetting - 0.15
    assert replay.average_accuracy > naive.average_accuracy + 0.1


def test_naive_forgets_first_experience(run_result):
    matrix, _, _, _ = run_result("naive")

    # Class-incremental naive training pushes the head to the newest classes.
    assert matrix[0, 0] > 0.8
    assert matrix[2, 0] < 0.2


def test_cumulative_keeps_first_experience(run_result):
    matrix, _, _, _ = run_result("cumulative")

    assert matrix[2, 0] > 0.5


def test_latent_replay_buffer_stores_features(run_result):
    _, _, strategy, _ = run_result("latent-replay")
    buffer = _replay_buffer(strategy)

    assert len(buffer.buffer) == 60
    for index in range(0, 60, 7):
        features, label, task_label = buffer.buffer[index]
        # A buffer entry is a 1280-value feature row, never a (28, 28) or (3, 32, 32) image.
        assert features.shape == (1280,)


def test_lwf_records_classes_from_task_labels(run_result):
    _, _, strategy, _ = run_result("lwf")
    lwf = next(plugin for plugin in strategy.plugins if hasattr(plugin, "lwf")).lwf

    # LwF read targets_task_labels and the targets of each experience.
    assert dict(lwf.prev_classes_by_task) == {0: set(CLASSES)}


def test_gem_stores_patterns_per_experience(run_result):
    _, _, strategy, _ = run_result("gem")
    gem = next(plugin for plugin in strategy.plugins if hasattr(plugin, "memory_x"))

    assert sorted(gem.memory_x) == [0, 1, 2]
    assert all(len(memory) == 20 for memory in gem.memory_x.values())


def test_gdumb_result_comes_from_strategy_model(run_result, benchmark):
    matrix, _, strategy, model = run_result("gdumb")

    # GDumb trains a fresh copy of the initial model at each experience after the first,
    # so the last row of R must come from strategy.model, not from the model passed in.
    assert strategy.model is not model
    final = [evaluate_accuracy(strategy.model, e.dataset) for e in benchmark.test_stream]
    assert np.allclose(matrix[2], final)


# Replay buffer


def _replay_buffer(strategy):
    plugin = next(plugin for plugin in strategy.plugins if isinstance(plugin, ReplayPlugin))
    return plugin.storage_policy


def test_replay_buffer_bounded_and_class_balanced(benchmark, backbone):
    RNGManager.set_random_seeds(SEED)
    settings = ReplaySettings(epochs=1, batch_size=40, mem_size=25)
    strategy = create_strategy("replay", FeatureHead(_transfer_model(backbone)), settings)
    buffer = _replay_buffer(strategy)

    seen: set[int] = set()
    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
        seen |= set(experience.classes_in_this_experience)

        sizes = {label: len(group.buffer) for label, group in buffer.buffer_groups.items()}
        assert len(buffer.buffer) <= 25
        assert len(buffer.buffer) == sum(sizes.values())
        assert set(sizes) == seen
        # 25 samples over 2, 4 and 6 classes: sizes differ by at most one.
        assert max(sizes.values()) - min(sizes.values()) <= 1
        assert sorted(set(int(label) for label in buffer.buffer.targets)) == sorted(seen)


def test_replay_zero_buffer_runs(benchmark, backbone):
    RNGManager.set_random_seeds(SEED)
    strategy = create_strategy(
        "replay", FeatureHead(_transfer_model(backbone)), ReplaySettings(epochs=1, mem_size=0)
    )

    matrix = run_stream(strategy, benchmark)

    assert len(_replay_buffer(strategy).buffer) == 0
    assert matrix.shape == (3, 3)


# Invalid requests


def test_unknown_strategy_lists_names(backbone):
    with pytest.raises(StrategyError, match="unknown strategy 'icarl'.*naive, cumulative, replay"):
        create_strategy("icarl", FeatureHead(_transfer_model(backbone)))


def test_negative_buffer_size(backbone):
    with pytest.raises(StrategyError, match=r"mem_size must be an integer >= 0, got -1"):
        create_strategy("replay", FeatureHead(_transfer_model(backbone)), ReplaySettings(mem_size=-1))


def test_settings_of_other_strategy(backbone):
    with pytest.raises(StrategyError, match="takes EWCSettings, got ReplaySettings"):
        create_strategy("ewc", FeatureHead(_transfer_model(backbone)), ReplaySettings())


def test_latent_replay_rejects_image_model(backbone):
    with pytest.raises(StrategyError, match="latent-replay trains a FeatureHead"):
        create_strategy("latent-replay", _transfer_model(backbone))


def test_latent_replay_rejects_full_mode(backbone):
    torch.manual_seed(SEED)
    full = TransferModel(backbone, create_head("linear", backbone.num_features, NUM_CLASSES), "full")

    with pytest.raises(StrategyError, match="full mode, whose input is the image itself"):
        create_strategy("latent-replay", FeatureHead(full))


def test_model_without_trainable_parameters(backbone):
    model = FeatureHead(_transfer_model(backbone))
    model.requires_grad_(False)

    with pytest.raises(StrategyError, match="no parameter with requires_grad=True"):
        create_strategy("naive", model)


@pytest.mark.parametrize(
    ("name", "settings", "message"),
    [
        ("naive", TrainingSettings(epochs=0), "epochs must be an integer >= 1"),
        ("naive", TrainingSettings(batch_size=2.5), "batch_size must be an integer"),
        ("naive", TrainingSettings(learning_rate=0.0), "learning_rate must be a finite number > 0"),
        ("naive", TrainingSettings(optimizer="rmsprop"), "optimizer is 'rmsprop'"),
        ("replay", ReplaySettings(adaptive_size=False), "total_num_classes is None"),
        ("replay", ReplaySettings(batch_size_mem=0), "batch_size_mem must be an integer >= 1"),
        ("ewc", EWCSettings(mode="onlinesum"), "EWC mode is 'onlinesum'"),
        ("ewc", EWCSettings(mode="online"), "needs decay_factor"),
        ("ewc", EWCSettings(decay_factor=0.5), "applies to EWC mode 'online' only"),
        ("ewc", EWCSettings(mode="online", decay_factor=1.5), "decay_factor must be"),
        ("ewc", EWCSettings(ewc_lambda=float("nan")), "ewc_lambda must be a finite number"),
        ("lwf", LwFSettings(temperature=0.0), "temperature must be a finite number > 0"),
        ("si", SISettings(eps=0.0), "eps must be a finite number > 0"),
        ("gem", GEMSettings(patterns_per_exp=0), "patterns_per_exp must be an integer >= 1"),
        ("agem", AGEMSettings(sample_size=0), "sample_size must be an integer >= 1"),
        ("gdumb", GDumbSettings(mem_size=0), "mem_size must be an integer >= 1"),
    ],
)
def test_invalid_settings_raise(backbone, name, settings, message):
    with pytest.raises(StrategyError, match=message):
        create_strategy(name, FeatureHead(_transfer_model(backbone)), settings)


def test_registry_entries_have_settings_types():
    for name, spec in STRATEGIES.items():
        assert spec.name == name
        assert issubclass(spec.settings_type, TrainingSettings)
        spec.settings_type().validate()


# Runner


def test_untrained_baseline_near_chance(benchmark, backbone):
    baseline = untrained_baseline(FeatureHead(_transfer_model(backbone)), benchmark)

    assert baseline.shape == (3,)
    # An untrained 10-way head picks among 10 classes, and each experience contains 2.
    assert np.all(baseline < 0.6)


def test_run_stream_rejects_misaligned_streams():
    pairs = [(torch.randn(4, 8), torch.tensor([0, 1, 0, 1]))]
    longer = benchmark_from_tensors(pairs * 3, pairs * 3, [0, 0, 0])
    shorter = benchmark_from_tensors(pairs * 2, pairs * 2, [0, 0])
    mixed = CLScenario([longer.streams["train"], shorter.streams["test"]])
    strategy = create_strategy("naive", torch.nn.Linear(8, 2), TrainingSettings(epochs=1))

    with pytest.raises(ValueError, match="3 training and 2 test experiences"):
        run_stream(strategy, mixed)
