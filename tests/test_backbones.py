"""Tests for the backbone registry, weights loading and the EfficientNet-Lite0 split."""

import copy
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
import torchvision
from efficientnet_lite_pytorch import EfficientNet

from fedgraft.models import (
    Backbone,
    ModelError,
    available_backbones,
    create_backbone,
    download_torchvision_weights,
    imagenet_classifier,
    preprocess_images,
)
from fedgraft.models.efficientnet_lite import (
    MBConvWithDropConnect,
    build_package_model,
    packaged_weights_path,
    split_package_model,
)
from fedgraft.models.torchvision_backbones import cached_weights_path

BUILTIN_BACKBONES = {"small_cnn", "efficientnet_lite0", "resnet18", "resnet50", "mobilenet_v3_small", "vgg16"}
ESPRESSO = 967  # ImageNet class index
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def _run_chain(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    for block in backbone.blocks:
        x = block(x)
    return x


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """Point torch.hub's cache at an empty temporary folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_registry_lists_builtin_backbones():
    assert set(available_backbones()) == BUILTIN_BACKBONES


@pytest.mark.parametrize("name", sorted(BUILTIN_BACKBONES))
def test_backbone_random_weights_shapes(name):
    torch.manual_seed(0)
    backbone = create_backbone(name, weights="random").eval()
    x = torch.rand(2, 3, 64, 64)

    with torch.no_grad():
        pooled = backbone(x)
        feature_map = _run_chain(backbone, x)

    assert backbone.name == name
    assert pooled.shape == (2, backbone.num_features)
    assert feature_map.ndim == 4
    assert feature_map.shape[:2] == (2, backbone.num_features)
    assert torch.equal(backbone.pool(feature_map), pooled)
    assert len(backbone.input_mean) == 3
    assert len(backbone.input_std) == 3


def test_unknown_backbone_lists_names():
    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet19", weights="random")

    message = str(excinfo.value)
    assert "'resnet19'" in message
    for name in BUILTIN_BACKBONES:
        assert name in message


def test_torchvision_imagenet_not_cached(torch_home):
    expected_path = torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights="imagenet")

    message = str(excinfo.value)
    assert "not cached" in message
    assert str(expected_path) in message
    assert "fedgraft download-weights resnet18" in message
    assert "--weights PATH" in message
    assert not expected_path.exists()


def test_torchvision_imagenet_reads_cache(torch_home):
    torch.manual_seed(1)
    source = torchvision.models.resnet18()
    path = cached_weights_path("resnet18")
    path.parent.mkdir(parents=True)
    torch.save(source.state_dict(), path)

    backbone = create_backbone("resnet18", weights="imagenet")

    assert path.parent == torch_home / "hub" / "checkpoints"
    assert torch.equal(backbone.blocks[0][0].weight, source.conv1.weight)
    assert torch.equal(backbone.blocks[4][1].bn2.running_var, source.layer4[1].bn2.running_var)


def test_weights_path_round_trip(tmp_path):
    torch.manual_seed(2)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)

    backbone = create_backbone("resnet18", weights=path)

    source_state = source.state_dict()
    loaded_state = backbone.state_dict()
    assert torch.equal(loaded_state["blocks.0.0.weight"], source_state["conv1.weight"])
    assert torch.equal(loaded_state["blocks.0.1.running_mean"], source_state["bn1.running_mean"])
    for key, value in source_state.items():
        if key.startswith("layer"):
            layer = int(key[len("layer")])
            backbone_key = f"blocks.{layer}.{key.split('.', 1)[1]}"
            assert torch.equal(loaded_state[backbone_key], value), backbone_key


def test_weights_path_backbone_layout(tmp_path):
    torch.manual_seed(3)
    saved = create_backbone("mobilenet_v3_small", weights="random")
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": saved.state_dict(), "epoch": 4}, path)

    loaded = create_backbone("mobilenet_v3_small", weights=str(path))

    for key, value in saved.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_weights_path_ignores_other_classifier(tmp_path):
    torch.manual_seed(4)
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18_10_classes.pt"
    torch.save({"model": source.state_dict()}, path)

    backbone = create_backbone("resnet18", weights=path)

    assert torch.equal(backbone.blocks[1][0].conv1.weight, source.layer1[0].conv1.weight)


def test_weights_file_missing(tmp_path):
    path = tmp_path / "absent.pt"

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights=path)

    assert str(path) in str(excinfo.value)
    assert "not found" in str(excinfo.value)


def test_weights_file_not_a_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"these bytes are not a torch checkpoint")

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights=path)

    assert str(path) in str(excinfo.value)
    assert "could not be read" in str(excinfo.value)


def test_weights_file_not_a_state_dict(tmp_path):
    path = tmp_path / "metrics.pt"
    torch.save({"epoch": 3, "accuracy": 0.9}, path)

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights=path)

    assert str(path) in str(excinfo.value)
    assert "'epoch'" in str(excinfo.value)


def test_weights_file_of_other_architecture(tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), path)

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights=path)

    message = str(excinfo.value)
    assert str(path) in message
    assert "missing key 'conv1.weight'" in message


def test_weights_file_wrong_shape(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(3, 3, 3, 3)
    path = tmp_path / "resnet18_bad.pt"
    torch.save(state, path)

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights=path)

    message = str(excinfo.value)
    assert str(path) in message
    assert "'layer2.0.conv1.weight'" in message
    assert "(3, 3, 3, 3)" in message
    assert "(128, 64, 3, 3)" in message


def test_weights_file_extra_key(tmp_path):
    state = create_backbone("resnet18", weights="random").state_dict()
    state["blocks.5.weight"] = torch.zeros(1)
    path = tmp_path / "resnet18_extra.pt"
    torch.save(state, path)

    with pytest.raises(ModelError) as excinfo:
        create_backbone("resnet18", weights=path)

    assert "unexpected key 'blocks.5.weight'" in str(excinfo.value)


def test_download_offline_raises_model_error(torch_home, monkeypatch):
    def raise_url_error(url, dst, hash_prefix=None, progress=True):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", raise_url_error)

    with pytest.raises(ModelError) as excinfo:
        download_torchvision_weights("resnet18")

    message = str(excinfo.value)
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert "no network in this test" in message
    assert str(cached_weights_path("resnet18")) in message
    assert not cached_weights_path("resnet18").exists()


def test_download_keeps_cached_file(torch_home, monkeypatch):
    def fail_download(url, dst, hash_prefix=None, progress=True):
        pytest.fail(f"download of {url} started although the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail_download)
    path = cached_weights_path("vgg16")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"cached")

    assert download_torchvision_weights("vgg16") == path
    assert path.read_bytes() == b"cached"


def test_download_passes_hash_prefix(torch_home, monkeypatch):
    calls = []

    def record_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        Path(dst).write_bytes(b"weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", record_download)

    path = download_torchvision_weights("mobilenet_v3_small")

    assert path == torch_home / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    assert calls == [
        (
            "https://download.pytorch.org/models/mobilenet_v3_small-047dcff4.pth",
            str(path),
            "047dcff4",
        )
    ]


def test_download_rejects_efficientnet():
    with pytest.raises(ModelError) as excinfo:
        download_torchvision_weights("efficientnet_lite0")

    assert "'efficientnet_lite0'" in str(excinfo.value)
    assert "resnet18" in str(excinfo.value)


def test_efficientnet_chain_matches_package_at_224():
    # The package's own loader and its default 224 px static padding.
    package_model = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(packaged_weights_path())
    ).eval()
    backbone = create_backbone("efficientnet_lite0", weights="imagenet").eval()
    torch.manual_seed(5)
    x = torch.rand(2, 3, 224, 224) * 2 - 1

    with torch.no_grad():
        expected = package_model.extract_features(x)
        feature_map = _run_chain(backbone, x)

    assert len(backbone.blocks) == 18
    assert feature_map.shape == (2, 1280, 7, 7)
    assert torch.equal(feature_map, expected)


def test_efficientnet_chain_matches_package_odd_size():
    torch.manual_seed(6)
    package_model = build_package_model().eval()
    backbone = split_package_model(copy.deepcopy(package_model)).eval()
    x = torch.rand(1, 3, 75, 75)

    with torch.no_grad():
        expected = package_model.extract_features(x)
        feature_map = _run_chain(backbone, x)

    assert feature_map.shape == (1, 1280, 3, 3)
    assert torch.equal(feature_map, expected)


def test_efficientnet_drop_connect_rates():
    torch.manual_seed(7)
    package_model = build_package_model()
    backbone = split_package_model(copy.deepcopy(package_model))

    mbconv_blocks = list(backbone.blocks[1:-1])
    rates = [block.drop_connect_rate for block in mbconv_blocks]
    assert all(isinstance(block, MBConvWithDropConnect) for block in mbconv_blocks)
    assert rates[0] == 0.0
    assert rates[8] == pytest.approx(0.2 * 8 / 16)
    assert rates[15] == pytest.approx(0.2 * 15 / 16)

    # In training mode, drop connect draws random masks, so equal outputs under the same
    # seed show that each block received the package's rate.
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(8)
    expected = package_model.train().extract_features(x)
    torch.manual_seed(8)
    feature_map = _run_chain(backbone.train(), x)
    assert torch.equal(feature_map, expected)


def test_efficientnet_weights_path_round_trip(tmp_path):
    torch.manual_seed(9)
    package_model = build_package_model()
    path = tmp_path / "lite0.pth"
    torch.save(package_model.state_dict(), path)

    backbone = create_backbone("efficientnet_lite0", weights=path)

    assert torch.equal(backbone.blocks[0][0].weight, package_model._conv_stem.weight)
    assert torch.equal(backbone.blocks[-1][1].running_var, package_model._bn1.running_var)


def test_efficientnet_normalisation_scales_to_unit_range():
    backbone = create_backbone("efficientnet_lite0", weights="random")
    images = np.array([[[0]], [[255]]], dtype=np.uint8)

    batch = preprocess_images(images, 16, backbone.input_mean, backbone.input_std)

    # The packaged weights were trained on RGB scaled to [-1, 1].
    assert torch.equal(batch[0], torch.full((3, 16, 16), -1.0))
    assert torch.equal(batch[1], torch.full((3, 16, 16), 1.0))


@pytest.fixture(scope="module")
def imagenet_model():
    backbone = create_backbone("efficientnet_lite0", weights="imagenet").eval()
    return backbone, imagenet_classifier().eval()


def _top1(imagenet_model, image) -> int:
    backbone, classifier = imagenet_model
    x = preprocess_images(image[None], 224, backbone.input_mean, backbone.input_std)
    with torch.no_grad():
        logits = classifier(backbone(x))
    return int(logits.argmax(dim=1).item())


def test_efficientnet_imagenet_predicts_espresso(imagenet_model):
    assert _top1(imagenet_model, skimage.data.coffee()) == ESPRESSO


def test_efficientnet_imagenet_predicts_cat(imagenet_model):
    assert _top1(imagenet_model, skimage.data.chelsea()) in CAT_CLASSES


def test_small_cnn_has_no_imagenet_weights():
    with pytest.raises(ModelError, match="pass --weights random"):
        create_backbone("small_cnn", weights="imagenet")
