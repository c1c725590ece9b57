"""Tests for TransferModel, the heads and image preprocessing."""

import numpy as np
import pytest
import torch
from torch import nn

from fedgraft.models import (
    HeadKind,
    TrainingMode,
    TransferModel,
    create_backbone,
    create_head,
    preprocess_images,
)

NUM_CLASSES = 3
IMAGE_SIZE = 32


def _make_model(
    mode: TrainingMode | str,
    trainable_blocks: int = 1,
    backbone_name: str = "resnet18",
    seed: int = 0,
) -> TransferModel:
    torch.manual_seed(seed)
    backbone = create_backbone(backbone_name, weights="random")
    head = create_head(HeadKind.LINEAR, backbone.num_features, NUM_CLASSES)
    return TransferModel(backbone, head, mode, trainable_blocks=trainable_blocks)


def _images(count: int = 4, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)


def _train_steps(model: TransferModel, steps: int = 3) -> None:
    """Take a few SGD steps on random data with the model in training mode."""
    generator = torch.Generator().manual_seed(1)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1, momentum=0.9)
    model.train()
    for _ in range(steps):
        x = torch.randn(8, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        y = torch.randint(0, NUM_CLASSES, (8,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def _block_keys(model: TransferModel, indices) -> set[str]:
    prefixes = tuple(f"backbone.blocks.{i}." for i in indices)
    return {key for key in model.state_dict() if key.startswith(prefixes)}


def _head_keys(model: TransferModel) -> set[str]:
    return {key for key in model.state_dict() if key.startswith("head.")}


# --- modes and freezing ---


@pytest.mark.parametrize(
    ("mode", "trainable_blocks", "split"),
    [
        (TrainingMode.FEATURE_EXTRACTION, 1, 5),
        (TrainingMode.FINE_TUNE, 1, 4),
        (TrainingMode.FINE_TUNE, 2, 3),
        (TrainingMode.FINE_TUNE, 5, 0),
        (TrainingMode.FULL, 1, 0),
        ("fine-tune", 3, 2),
    ],
)
def test_split_per_mode(mode, trainable_blocks, split):
    model = _make_model(mode, trainable_blocks)

    assert model.split == split
    assert model.mode is TrainingMode(mode)


def test_requires_grad_feature_extraction():
    model = _make_model(TrainingMode.FEATURE_EXTRACTION)

    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_requires_grad_fine_tune():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=2)

    for index, block in enumerate(model.backbone.blocks):
        expected = index >= 3
        for name, parameter in block.named_parameters():
            assert parameter.requires_grad is expected, f"blocks.{index}.{name}"
    assert all(p.requires_grad for p in model.head.parameters())


def test_requires_grad_full():
    model = _make_model(TrainingMode.FULL)

    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("trainable_blocks", [0, 6, -1])
def test_fine_tune_rejects_trainable_blocks(trainable_blocks):
    with pytest.raises(ValueError) as excinfo:
        _make_model(TrainingMode.FINE_TUNE, trainable_blocks)

    message = str(excinfo.value)
    assert str(trainable_blocks) in message
    assert "between 1 and 5" in message
    assert "resnet18" in message


def test_unknown_mode_rejected():
    with pytest.raises(ValueError) as excinfo:
        _make_model("linear-probe")

    assert "'linear-probe'" in str(excinfo.value)
    assert "feature-extraction" in str(excinfo.value)


@pytest.mark.parametrize(
    ("mode", "trainable_blocks", "backbone_name"),
    [
        (TrainingMode.FEATURE_EXTRACTION, 1, "resnet18"),
        (TrainingMode.FINE_TUNE, 2, "resnet18"),
        (TrainingMode.FINE_TUNE, 3, "efficientnet_lite0"),
    ],
)
def test_frozen_blocks_bit_identical_after_training(mode, trainable_blocks, backbone_name):
    model = _make_model(mode, trainable_blocks, backbone_name)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainable_keys = set(model.trainable_state_dict())
    parameter_keys = {name for name, _ in model.named_parameters()}

    _train_steps(model)

    after = model.state_dict()
    frozen_keys = set(before) - trainable_keys
    assert frozen_keys, "the test needs frozen entries"
    for key in frozen_keys:
        assert torch.equal(after[key], before[key]), f"frozen entry {key} changed"
    for key in trainable_keys & parameter_keys:
        assert not torch.equal(after[key], before[key]), f"trainable parameter {key} did not change"
    for key in model.trainable_buffer_names():
        assert not torch.equal(after[key], before[key]), f"trainable buffer {key} did not change"


def test_frozen_batchnorm_stays_eval_after_train():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=2)

    model.eval()
    model.train()

    for index, block in enumerate(model.backbone.blocks):
        for module in block.modules():
            assert module.training is (index >= 3), f"blocks.{index} {type(module).__name__}"
    assert model.head.training


def test_frozen_features_overrides_train_mode():
    model = _make_model(TrainingMode.FEATURE_EXTRACTION)
    before = {key: value.clone() for key, value in model.backbone.state_dict().items()}

    # A caller that bypasses TransferModel.train must not make frozen BatchNorm update.
    model.backbone.train()
    model.frozen_features(_images())

    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


# --- frozen features and forward ---


def test_frozen_features_feature_extraction():
    model = _make_model(TrainingMode.FEATURE_EXTRACTION).eval()
    x = _images()

    features = model.frozen_features(x)

    assert features.shape == (4, 512)
    assert not features.requires_grad
    with torch.no_grad():
        assert torch.equal(features, model.backbone(x))


def test_frozen_features_fine_tune():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=2).eval()
    x = _images()

    features = model.frozen_features(x)

    # resnet18 blocks[:3] is stem, layer1, layer2: 128 channels at 1/8 resolution.
    assert features.shape == (4, 128, 4, 4)
    assert not features.requires_grad
    with torch.no_grad():
        expected = model.backbone.blocks[2](model.backbone.blocks[1](model.backbone.blocks[0](x)))
    assert torch.equal(features, expected)


def test_frozen_features_full_returns_input():
    model = _make_model(TrainingMode.FULL)
    x = _images()

    assert model.frozen_features(x) is x


@pytest.mark.parametrize(
    ("mode", "trainable_blocks"),
    [
        (TrainingMode.FEATURE_EXTRACTION, 1),
        (TrainingMode.FINE_TUNE, 2),
        (TrainingMode.FULL, 1),
    ],
)
def test_forward_equals_cached_path(mode, trainable_blocks):
    model = _make_model(mode, trainable_blocks).eval()
    x = _images()

    with torch.no_grad():
        logits = model(x)
        from_features = model.forward_from_features(model.frozen_features(x))
        reference = model.head(model.backbone(x))

    assert logits.shape == (4, NUM_CLASSES)
    assert torch.equal(logits, from_features)
    torch.testing.assert_close(logits, reference, rtol=0, atol=1e-6)


def test_fine_tune_gradients_reach_trainable_blocks_only():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1)

    model(_images()).sum().backward()

    assert model.backbone.blocks[4][0].conv1.weight.grad is not None
    assert model.backbone.blocks[3][0].conv1.weight.grad is None
    assert model.head.fc.weight.grad is not None


# --- trainable state ---


def test_trainable_state_dict_feature_extraction():
    model = _make_model(TrainingMode.FEATURE_EXTRACTION)

    state = model.trainable_state_dict()

    assert set(state) == {"head.fc.weight", "head.fc.bias"}
    assert model.trainable_buffer_names() == set()


def test_trainable_state_dict_fine_tune():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=2)

    state = model.trainable_state_dict()

    assert set(state) == _head_keys(model) | _block_keys(model, [3, 4])
    assert "backbone.blocks.4.1.bn2.running_mean" in state
    assert "backbone.blocks.3.0.downsample.1.num_batches_tracked" in state
    assert not _block_keys(model, [0, 1, 2]) & set(state)


def test_trainable_buffer_names_fine_tune():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1)

    buffers = model.trainable_buffer_names()

    expected = {
        name for name, _ in model.named_buffers() if name.startswith("backbone.blocks.4.")
    }
    assert buffers == expected
    assert "backbone.blocks.4.0.bn1.running_var" in buffers
    assert "backbone.blocks.4.0.bn1.num_batches_tracked" in buffers
    assert "backbone.blocks.4.0.bn1.weight" not in buffers


def test_trainable_state_dict_full_covers_everything():
    model = _make_model(TrainingMode.FULL)

    assert set(model.trainable_state_dict()) == set(model.state_dict())


def test_trainable_state_dict_returns_copies():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1)
    state = model.trainable_state_dict()

    state["head.fc.weight"].add_(1.0)
    state["backbone.blocks.4.0.bn1.running_mean"].add_(1.0)

    assert not torch.equal(state["head.fc.weight"], model.head.fc.weight)
    assert not torch.equal(
        state["backbone.blocks.4.0.bn1.running_mean"],
        model.backbone.blocks[4][0].bn1.running_mean,
    )
    assert not any(value.requires_grad for value in state.values())


def test_load_trainable_state_dict_round_trip():
    source = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1, seed=1)
    _train_steps(source, steps=1)
    target = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1, seed=2)
    trained = source.trainable_state_dict()
    frozen_before = {
        key: value.clone() for key, value in target.state_dict().items() if key not in trained
    }

    target.load_trainable_state_dict(trained)

    loaded = target.state_dict()
    for key, value in trained.items():
        assert torch.equal(loaded[key], value), key
    for key, value in frozen_before.items():
        assert torch.equal(loaded[key], value), key


def test_load_trainable_rejects_missing_key():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1)
    state = model.trainable_state_dict()
    del state["backbone.blocks.4.1.bn2.running_var"]

    with pytest.raises(ValueError, match="missing key 'backbone.blocks.4.1.bn2.running_var'"):
        model.load_trainable_state_dict(state)


def test_load_trainable_rejects_frozen_key():
    model = _make_model(TrainingMode.FINE_TUNE, trainable_blocks=1)
    state = model.trainable_state_dict()
    state["backbone.blocks.0.0.weight"] = model.state_dict()["backbone.blocks.0.0.weight"]

    with pytest.raises(ValueError) as excinfo:
        model.load_trainable_state_dict(state)

    assert "unexpected key 'backbone.blocks.0.0.weight'" in str(excinfo.value)
    assert "frozen in fine-tune mode" in str(excinfo.value)


def test_load_trainable_rejects_unknown_key():
    model = _make_model(TrainingMode.FEATURE_EXTRACTION)
    state = model.trainable_state_dict()
    state["head.fc2.weight"] = torch.zeros(3, 3)

    with pytest.raises(ValueError, match="unexpected key 'head.fc2.weight'"):
        model.load_trainable_state_dict(state)


def test_load_trainable_rejects_wrong_shape():
    model = _make_model(TrainingMode.FEATURE_EXTRACTION)
    before = model.head.fc.bias.clone()
    state = model.trainable_state_dict()
    state["head.fc.weight"] = torch.zeros(NUM_CLASSES + 1, 512)
    state["head.fc.bias"] = torch.ones(NUM_CLASSES)

    with pytest.raises(ValueError) as excinfo:
        model.load_trainable_state_dict(state)

    message = str(excinfo.value)
    assert "'head.fc.weight'" in message
    assert "(4, 512)" in message
    assert "(3, 512)" in message
    assert torch.equal(model.head.fc.bias, before), "a rejected state must load nothing"


# --- heads ---


def test_linear_head_shape():
    torch.manual_seed(0)
    head = create_head("linear", in_features=16, num_classes=5)

    assert head(torch.randn(7, 16)).shape == (7, 5)


def test_mlp_head_shape():
    torch.manual_seed(0)
    head = create_head(HeadKind.MLP, in_features=16, num_classes=5, hidden_features=8, dropout=0.5)

    assert head(torch.randn(7, 16)).shape == (7, 5)
    assert head.fc1.out_features == 8
    assert head.dropout.p == 0.5


def test_head_keys_independent_of_dropout():
    plain = create_head(HeadKind.LINEAR, 16, 5)
    with_dropout = create_head(HeadKind.LINEAR, 16, 5, dropout=0.3)

    assert set(plain.state_dict()) == set(with_dropout.state_dict()) == {"fc.weight", "fc.bias"}


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"kind": "conv"}, "'conv'"),
        ({"num_classes": 0}, "num_classes"),
        ({"in_features": 0}, "in_features"),
        ({"dropout": 1.0}, "dropout"),
        ({"kind": "mlp", "hidden_features": 0}, "hidden_features"),
    ],
)
def test_create_head_rejects_invalid(kwargs, fragment):
    arguments = {"kind": "linear", "in_features": 16, "num_classes": 5, **kwargs}

    with pytest.raises(ValueError, match=fragment):
        create_head(**arguments)


def test_transfer_model_with_mlp_head():
    torch.manual_seed(0)
    backbone = create_backbone("mobilenet_v3_small", weights="random")
    head = create_head(HeadKind.MLP, backbone.num_features, NUM_CLASSES, hidden_features=32)
    model = TransferModel(backbone, head, TrainingMode.FEATURE_EXTRACTION).eval()

    with torch.no_grad():
        logits = model(_images(count=2))

    assert logits.shape == (2, NUM_CLASSES)
    assert set(model.trainable_state_dict()) == {
        "head.fc1.weight",
        "head.fc1.bias",
        "head.fc2.weight",
        "head.fc2.bias",
    }


# --- preprocessing ---


def test_preprocess_grey_to_three_channels():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[1] = 255

    batch = preprocess_images(images, 32, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))

    assert batch.shape == (2, 3, 32, 32)
    assert batch.dtype == torch.float32
    # Black: (0 - mean) / std per channel; white: (1 - mean) / std.
    assert torch.equal(batch[0, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))
    assert torch.equal(batch[1, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))


def test_preprocess_grey_with_channel_axis():
    images = np.full((1, 20, 20, 1), 51, dtype=np.uint8)

    batch = preprocess_images(images, 16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    assert batch.shape == (1, 3, 16, 16)
    torch.testing.assert_close(batch, torch.full((1, 3, 16, 16), 0.2), rtol=0, atol=1e-6)


def test_preprocess_rgb_keeps_channel_order():
    images = np.zeros((1, 40, 40, 3), dtype=np.uint8)
    images[..., 0] = 255

    batch = preprocess_images(images, 24, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))

    assert batch.shape == (1, 3, 24, 24)
    torch.testing.assert_close(batch[0, 0], torch.ones(24, 24), rtol=0, atol=1e-6)
    assert torch.equal(batch[0, 1:], torch.zeros(2, 24, 24))


def test_preprocess_chunks_match_single_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(600, 12, 12), dtype=np.uint8)

    batch = preprocess_images(images, 16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    for index in (0, 511, 512, 599):
        single = preprocess_images(images[index : index + 1], 16, (0.5,) * 3, (0.5,) * 3)
        assert torch.equal(batch[index], single[0]), index


@pytest.mark.parametrize("image_size", [15, 1025, 0])
def test_preprocess_rejects_image_size(image_size):
    images = np.zeros((1, 28, 28), dtype=np.uint8)

    with pytest.raises(ValueError, match=f"got {image_size}"):
        preprocess_images(images, image_size, (0.5,) * 3, (0.5,) * 3)


def test_preprocess_rejects_float_images():
    images = np.zeros((1, 28, 28), dtype=np.float32)

    with pytest.raises(ValueError, match="uint8"):
        preprocess_images(images, 32, (0.5,) * 3, (0.5,) * 3)


def test_preprocess_rejects_rgba_images():
    images = np.zeros((1, 28, 28, 4), dtype=np.uint8)

    with pytest.raises(ValueError, match=r"\(1, 28, 28, 4\)"):
        preprocess_images(images, 32, (0.5,) * 3, (0.5,) * 3)


def test_preprocess_rejects_bad_normalisation():
    images = np.zeros((1, 28, 28), dtype=np.uint8)

    with pytest.raises(ValueError, match="mean"):
        preprocess_images(images, 32, (0.5, 0.5), (0.5,) * 3)
    with pytest.raises(ValueError, match="std"):
        preprocess_images(images, 32, (0.5,) * 3, (0.5, 0.0, 0.5))
