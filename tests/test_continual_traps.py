"""Traps of Avalanche's strategies on fedgraft's models, each checked on a real run or by hand.

The image runs use EfficientNet-Lite0 at 32 px on a few dozen real Fashion-MNIST images.
The hand computations use a 2 x 2 linear layer. Expected values of avalanche-lib 0.6.0
come from its source: ``avalanche/training/plugins/ewc.py``, ``gem.py``, ``replay.py``
and ``avalanche/training/regularization.py`` (LwF).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import qpsolvers
import torch
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import EWCPlugin, GEMPlugin, ReplayPlugin, SupervisedPlugin
from avalanche.training.utils import copy_params_dict
from torch import nn

from fedgraft.continual.avalanche_adapter import (
    FeatureHead,
    benchmark_from_tensors,
    feature_benchmark,
    image_benchmark,
    make_dataset,
)
from fedgraft.continual.runner import evaluate_accuracy
from fedgraft.continual.strategies import create_strategy
from fedgraft.continual.strategy_settings import (
    EWCSettings,
    GEMSettings,
    LwFSettings,
    ReplaySettings,
    TrainingSettings,
)
from fedgraft.continual.streams import class_incremental
from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.models.head import create_head
from fedgraft.models.registry import create_backbone
from fedgraft.models.state import state_dict_sha256
from fedgraft.models.transfer import TransferModel

IMAGE_SIZE = 32
NUM_CLASSES = 10
SEED = 0


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Run this module's tiny tensors on one thread, which is faster when the CPUs are busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def stream():
    """Class-incremental stream of 2 experiences over classes 0-3, 10 train and 5 test images per class."""
    source = load_fashion_mnist("test")
    per_class = [np.flatnonzero(source.labels == label) for label in range(4)]
    train = source.subset(np.sort(np.concatenate([members[:10] for members in per_class])))
    test = source.subset(np.sort(np.concatenate([members[10:15] for members in per_class])))
    return class_incremental(train, test, num_tasks=2, seed=None)


@pytest.fixture(scope="module")
def backbone():
    return create_backbone("efficientnet_lite0", "imagenet")


def _transfer_model(backbone, mode="feature-extraction", **kwargs) -> TransferModel:
    torch.manual_seed(SEED)
    head = create_head("linear", backbone.num_features, NUM_CLASSES)
    return TransferModel(backbone, head, mode, **kwargs)


def _plugin(strategy, plugin_type):
    return next(plugin for plugin in strategy.plugins if isinstance(plugin, plugin_type))


# EWC


def test_ewc_frozen_backbone_zero_importance(stream, backbone):
    RNGManager.set_random_seeds(SEED)
    model = _transfer_model(backbone)
    benchmark = image_benchmark(stream, IMAGE_SIZE, backbone.input_mean, backbone.input_std)
    strategy = create_strategy("ewc", model, EWCSettings(epochs=1, batch_size=10, ewc_lambda=100.0))
    backbone_before = state_dict_sha256(backbone.state_dict())

    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])
    importances = _plugin(strategy, EWCPlugin).importances

    # Both experiences computed importances over every parameter of the transfer model.
    assert sorted(importances) == [0, 1]
    for step in (0, 1):
        frozen = {name: imp for name, imp in importances[step].items() if name.startswith("backbone.")}
        head = {name: imp for name, imp in importances[step].items() if name.startswith("head.")}
        assert len(frozen) == len(list(backbone.parameters()))
        assert all(float(imp.data.abs().max()) == 0.0 for imp in frozen.values())
        assert float(head["head.fc.weight"].data.sum()) > 0.0
    # The penalty on experience 1 ran over the frozen parameters and left them unchanged.
    assert state_dict_sha256(backbone.state_dict()) == backbone_before


def test_ewc_importance_pass_keeps_batchnorm_statistics():
    cnn = create_backbone("small_cnn", "random")
    torch.manual_seed(SEED)
    # Fine-tune mode trains the last conv block, whose BatchNorm layer has running statistics.
    model = TransferModel(cnn, create_head("linear", cnn.num_features, NUM_CLASSES), "fine-tune")
    model.train()
    images = torch.randn(12, 3, IMAGE_SIZE, IMAGE_SIZE)
    dataset = make_dataset(images, torch.arange(12) % 4, task_label=0)
    batchnorm = cnn.blocks[-1][1]
    assert isinstance(batchnorm, nn.BatchNorm2d)
    before = {name: buffer.clone() for name, buffer in model.named_buffers()}

    importances = EWCPlugin(ewc_lambda=1.0).compute_importances(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), dataset, "cpu", 4
    )

    after = dict(model.named_buffers())
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    # The pass really did backpropagate through the trainable block.
    assert float(importances["backbone.blocks.2.0.weight"].data.sum()) > 0.0
    # compute_importances ends with model.train(), and the model was in train mode before.
    assert batchnorm.training
    # The same forward pass in train mode does move the statistics, so the check can fail.
    model(images)
    assert not torch.equal(batchnorm.running_mean, before["backbone.blocks.2.1.running_mean"])


def test_ewc_importance_by_hand():
    # Zero weights give equal logits, so softmax is (0.5, 0.5). For x = (1, 2) with label 0
    # the logit gradient is p - onehot = (-0.5, 0.5), and the weight gradient is its outer
    # product with x: [[-0.5, -1], [0.5, 1]]. One mini-batch, so F is its square.
    model = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.weight)
    dataset = make_dataset(torch.tensor([[1.0, 2.0]]), torch.tensor([0]), task_label=0)

    importances = EWCPlugin(ewc_lambda=1.0).compute_importances(
        model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1), dataset, "cpu", 1
    )

    expected = torch.tensor([[0.25, 1.0], [0.25, 1.0]])
    assert torch.allclose(importances["weight"].data, expected)


def test_ewc_penalty_by_hand():
    # Avalanche 0.6 adds ewc_lambda * sum F * (w - w*)^2 to the loss, without a factor 1/2.
    plugin = EWCPlugin(ewc_lambda=0.4)
    model = nn.Linear(2, 2, bias=False)
    nn.init.zeros_(model.weight)
    importances = copy_params_dict(model)
    importances["weight"].data = torch.tensor([[0.25, 1.0], [0.25, 1.0]])
    plugin.update_importances(importances, 0)
    plugin.saved_params[0] = copy_params_dict(model)
    strategy = SimpleNamespace(
        clock=SimpleNamespace(train_exp_counter=1), model=model, device="cpu", loss=torch.tensor(0.0)
    )

    plugin.before_backward(strategy)
    unmoved = float(strategy.loss.detach())

    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, -2.0]]))
    strategy.loss = torch.tensor(0.0)
    plugin.before_backward(strategy)

    assert unmoved == 0.0
    # 0.25 * 1^2 + 1 * 0^2 + 0.25 * 0^2 + 1 * (-2)^2 = 4.25, times lambda 0.4.
    assert float(strategy.loss.detach()) == pytest.approx(1.7)


def test_ewc_penalty_after_training_matches_formula():
    torch.manual_seed(SEED)
    inputs = torch.randn(16, 3)
    labels = torch.tensor([0, 1] * 8)
    benchmark = benchmark_from_tensors([(inputs, labels)], [(inputs, labels)], [0])
    model = nn.Linear(3, 2)
    strategy = create_strategy("ewc", model, EWCSettings(epochs=2, batch_size=4, ewc_lambda=3.0))
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    plugin = _plugin(strategy, EWCPlugin)

    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    strategy.loss = torch.tensor(0.0)
    plugin.before_backward(strategy)

    expected = sum(
        float((plugin.importances[0][name].data * (parameter.detach() - plugin.saved_params[0][name].data) ** 2).sum())
        for name, parameter in model.named_parameters()
    )
    assert expected > 0.0
    assert float(strategy.loss.detach()) == pytest.approx(3.0 * expected, rel=1e-5)


# The all-classes head


def test_head_rows_of_new_classes_train(stream, backbone):
    RNGManager.set_random_seeds(SEED)
    transfer = _transfer_model(backbone)
    benchmark = feature_benchmark(stream, transfer, IMAGE_SIZE)
    model = FeatureHead(transfer)
    strategy = create_strategy(
        "naive", model, TrainingSettings(epochs=10, batch_size=10, learning_rate=0.01)
    )
    weight = transfer.head.fc.weight
    new_classes = list(stream[1].classes)
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    after_first = weight.detach().clone()

    gradients = []
    strategy.plugins.append(_GradientRecorder(weight, gradients))
    strategy.train(benchmark.train_stream[1], eval_streams=[])

    # The head is never replaced or grown: its 10 rows cover the whole label map.
    assert strategy.model.head.fc is transfer.head.fc
    assert weight.shape == (NUM_CLASSES, backbone.num_features)
    # The optimizer contains the head weight, and the new classes' rows got gradient and moved.
    assert any(parameter is weight for parameter in strategy.optimizer.param_groups[0]["params"])
    assert all(float(gradient[new_classes].abs().sum()) > 0.0 for gradient in gradients)
    moved = (weight.detach() - after_first).norm(dim=1)
    assert all(float(moved[label]) > 0.0 for label in new_classes)
    assert evaluate_accuracy(model, benchmark.test_stream[1].dataset) > 0.7


class _GradientRecorder(SupervisedPlugin):
    """Copy one parameter's gradient after every backward pass."""

    def __init__(self, parameter: torch.Tensor, gradients: list) -> None:
        super().__init__()
        self.parameter = parameter
        self.gradients = gradients

    def after_backward(self, strategy, **kwargs):
        self.gradients.append(self.parameter.grad.detach().clone())


# LwF


def _two_class_pairs(seed: int):
    """Two experiences of a 4-class problem on random 4-value inputs: classes 0, 1 then 2, 3."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for classes in ((0, 1), (2, 3)):
        labels = torch.tensor(classes * 8)
        inputs = torch.randn(16, 4, generator=generator) + 2.0 * nn.functional.one_hot(labels, 4)
        pairs.append((inputs, labels))
    return pairs


def test_lwf_distils_only_old_units():
    torch.manual_seed(SEED)
    pairs = _two_class_pairs(SEED)
    benchmark = benchmark_from_tensors(pairs, pairs, [0, 0])
    model = nn.Linear(4, 4)
    strategy = create_strategy("lwf", model, LwFSettings(epochs=2, batch_size=8, alpha=1.0, temperature=2.0))
    strategy.train(benchmark.train_stream[0], eval_streams=[])
    lwf = next(plugin for plugin in strategy.plugins if hasattr(plugin, "lwf")).lwf
    with torch.no_grad():
        model.weight.add_(torch.randn_like(model.weight))
    inputs = pairs[1][0]

    outputs = model(inputs).detach().requires_grad_(True)
    loss = lwf(inputs, outputs, model)
    loss.backward()

    assert dict(lwf.prev_classes_by_task) == {0: {0, 1}}
    # The loss is KL(teacher || student) over units 0 and 1 at temperature 2.
    teacher = torch.softmax(lwf.prev_model(inputs)[:, :2] / 2.0, dim=1)
    student = torch.log_softmax(outputs[:, :2] / 2.0, dim=1)
    expected = float((teacher * (teacher.log() - student)).sum(dim=1).mean())
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(outputs.grad[:, :2].abs().sum()) > 0.0
    assert torch.equal(outputs.grad[:, 2:], torch.zeros(16, 2))
    # Moving the new units' logits leaves the loss unchanged.
    shifted = outputs.detach().clone()
    shifted[:, 2:] += 5.0
    assert float(lwf(inputs, shifted, model)) == pytest.approx(float(loss), rel=1e-6)


# Replay


class _IterationCounter(SupervisedPlugin):
    """Count training iterations per epoch and record the size of every mini-batch."""

    def __init__(self) -> None:
        super().__init__()
        self.per_epoch: list[int] = []
        self.batch_sizes: list[int] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.per_epoch.append(0)

    def after_training_iteration(self, strategy, **kwargs):
        self.per_epoch[-1] += 1
        self.batch_sizes.append(len(strategy.mb_x))


def test_replay_epoch_follows_experience_not_buffer():
    generator = torch.Generator().manual_seed(SEED)
    big = (torch.randn(200, 3, generator=generator), torch.arange(200) % 2)
    small = (torch.randn(10, 3, generator=generator), torch.tensor([2, 3] * 5))
    benchmark = benchmark_from_tensors([big, small], [big, small], [0, 0])
    RNGManager.set_random_seeds(SEED)
    strategy = create_strategy("replay", nn.Linear(3, 4), ReplaySettings(epochs=2, batch_size=5, mem_size=200))
    counter = _IterationCounter()
    strategy.plugins.append(counter)

    strategy.train(benchmark.train_stream[0], eval_streams=[])
    buffered = len(_plugin(strategy, ReplayPlugin).storage_policy.buffer)
    strategy.train(benchmark.train_stream[1], eval_streams=[])

    assert buffered == 200
    # 200 samples at 5 per batch, then 10 samples at 5 per batch, 2 epochs each. An epoch
    # over the 200-sample buffer would take 40 iterations on the second experience too.
    assert counter.per_epoch == [40, 40, 2, 2]
    # On the second experience each mini-batch has 5 new samples and 5 buffer samples.
    assert counter.batch_sizes[-4:] == [10, 10, 10, 10]


# GEM


def test_gem_quadprog_projection_by_hand():
    assert "quadprog" in qpsolvers.available_solvers
    plugin = GEMPlugin(patterns_per_experience=1, memory_strength=0.5)
    plugin.G = torch.tensor([[1.0, 0.0]])

    projected = plugin.solve_quadprog(torch.tensor([-1.0, 1.0]))

    # The dual problem is min 0.5 * 1.001 * v^2 - v over v >= 0.5, whose solution is
    # v = 1 / 1.001 (Avalanche adds 1e-3 to G G^T). The projected gradient is v * G + g.
    assert torch.allclose(projected, torch.tensor([1 / 1.001 - 1.0, 1.0]), atol=1e-6)


def test_gem_projects_during_training():
    torch.manual_seed(SEED)
    pairs = _two_class_pairs(SEED)
    benchmark = benchmark_from_tensors(pairs, pairs, [0, 0])
    strategy = create_strategy(
        "gem", nn.Linear(4, 4), GEMSettings(epochs=3, batch_size=8, patterns_per_exp=8, learning_rate=0.05)
    )
    gem = _plugin(strategy, GEMPlugin)
    solve = gem.solve_quadprog
    calls = []
    gem.solve_quadprog = lambda gradient: calls.append(1) or solve(gradient)

    for experience in benchmark.train_stream:
        strategy.train(experience, eval_streams=[])

    assert sorted(gem.memory_x) == [0, 1]
    assert len(gem.memory_x[0]) == 8
    # Learning classes 2 and 3 raises the loss on the stored samples of classes 0 and 1 at
    # some step, so GEM solved at least one quadratic programme.
    assert len(calls) > 0
