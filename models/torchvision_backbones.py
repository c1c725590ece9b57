"""torchvision classification models as backbones: ResNet-18/50, MobileNetV3-Small, VGG-16.

ImageNet weights are read from torch.hub's cache only, and nothing is downloaded unless
`download_torchvision_weights` is called. The original classifiers are dropped because
the transfer model's head replaces them.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch.hub
import torchvision
from torch import nn
from torchvision.models import (
    MobileNet_V3_Small_Weights,
    ResNet18_Weights,
    ResNet50_Weights,
    VGG16_Weights,
    WeightsEnum,
)

from .errors import ModelError
from .registry import (
    WEIGHTS_IMAGENET,
    WEIGHTS_RANDOM,
    Backbone,
    BackboneSpec,
    load_weights_file,
    register_backbone,
)

__all__ = [
    "TORCHVISION_BACKBONES",
    "cached_weights_path",
    "create_torchvision_backbone",
    "download_torchvision_weights",
]

logger = logging.getLogger(__name__)


def _split_resnet(model: nn.Module) -> list[nn.Module]:
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [stem, model.layer1, model.layer2, model.layer3, model.layer4]


def _split_mobilenet_v3(model: nn.Module) -> list[nn.Module]:
    return list(model.features)


def _split_vgg(model: nn.Module) -> list[nn.Module]:
    """Cut VGG's `features` after each max pool, giving one block per resolution."""
    blocks: list[nn.Module] = []
    layers: list[nn.Module] = []
    for layer in model.features:
        layers.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*layers))
            layers = []
    if layers:
        blocks.append(nn.Sequential(*layers))
    return blocks


@dataclass(frozen=True)
class _TorchvisionEntry:
    """How to build and split one torchvision model."""

    # torchvision constructor, called with weights=None for random initialisation.
    constructor: Callable[..., nn.Module]
    # ImageNet weights for weights="imagenet". Their transforms give the input normalisation.
    weights: WeightsEnum
    # Returns the chain of blocks, taken from the constructed model.
    split: Callable[[nn.Module], list[nn.Module]]
    # Channels of the last block's output.
    num_features: int
    description: str


TORCHVISION_BACKBONES: dict[str, _TorchvisionEntry] = {
    "resnet18": _TorchvisionEntry(
        constructor=torchvision.models.resnet18,
        weights=ResNet18_Weights.IMAGENET1K_V1,
        split=_split_resnet,
        num_features=512,
        description="ResNet-18 (torchvision), 512 features, 5 blocks (stem, layer1-layer4)",
    ),
    "resnet50": _TorchvisionEntry(
        constructor=torchvision.models.resnet50,
        weights=ResNet50_Weights.IMAGENET1K_V2,
        split=_split_resnet,
        num_features=2048,
        description="ResNet-50 (torchvision), 2048 features, 5 blocks (stem, layer1-layer4)",
    ),
    "mobilenet_v3_small": _TorchvisionEntry(
        constructor=torchvision.models.mobilenet_v3_small,
        weights=MobileNet_V3_Small_Weights.IMAGENET1K_V1,
        split=_split_mobilenet_v3,
        num_features=576,
        description=(
            "MobileNetV3-Small (torchvision), 576 features, 13 blocks (features[0] to features[12])"
        ),
    ),
    "vgg16": _TorchvisionEntry(
        constructor=torchvision.models.vgg16,
        weights=VGG16_Weights.IMAGENET1K_V1,
        split=_split_vgg,
        num_features=512,
        description=(
            "VGG-16 (torchvision), 512 features, 5 blocks (one per max pool), "
            "inputs of at least 32 px"
        ),
    ),
}


def cached_weights_path(name: str) -> Path:
    """Return where torch.hub caches the ImageNet weights of the torchvision backbone `name`.

    The path is ``torch.hub.get_dir()/checkpoints/<file name of the weights URL>``, the
    file that torchvision's own loader reads, so TORCH_HOME moves it.
    """
    entry = _torchvision_entry(name)
    file_name = os.path.basename(urlparse(entry.weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def _torchvision_entry(name: str) -> _TorchvisionEntry:
    entry = TORCHVISION_BACKBONES.get(name)
    if entry is None:
        known = ", ".join(sorted(TORCHVISION_BACKBONES))
        raise ModelError(
            f"{name!r} is not a torchvision backbone: expected one of {known}. "
            f"efficientnet_lite0 needs no download because its weights come with its package."
        )
    return entry


def create_torchvision_backbone(name: str, weights: str | Path = WEIGHTS_IMAGENET) -> Backbone:
    """Build the torchvision backbone `name`.

    `weights` is "imagenet" for the cached ImageNet weights, "random" for torchvision's
    random initialisation, or the path of a state-dict file in torchvision's layout
    (the classifier keys are ignored) or saved from this Backbone. "imagenet" raises
    ModelError when the weights are not cached, and never downloads them.
    """
    entry = _torchvision_entry(name)
    model = entry.constructor(weights=None)
    normalisation = entry.weights.transforms()
    backbone = Backbone(
        name, entry.split(model), entry.num_features, normalisation.mean, normalisation.std
    )
    if weights == WEIGHTS_RANDOM:
        return backbone

    if weights == WEIGHTS_IMAGENET:
        path = cached_weights_path(name)
        if not path.is_file():
            raise ModelError(
                f"ImageNet weights for {name} are not cached: expected the file {path}. "
                f"Run `fedgraft download-weights {name}` on a machine with network access "
                f"and copy the file to that path, or pass --weights PATH with a local "
                f"state-dict file."
            )
    else:
        path = Path(weights)

    load_weights_file(backbone, path, source_model=model)
    return backbone


def download_torchvision_weights(name: str) -> Path:
    """Download the ImageNet weights of `name` into torch.hub's cache and return the path.

    A file already in the cache is kept and not downloaded again. The download checks
    the SHA-256 prefix that torchvision puts in the file name. Raises ModelError when
    the name is not a torchvision backbone or the download fails.
    """
    entry = _torchvision_entry(name)
    path = cached_weights_path(name)
    if path.is_file():
        logger.info("Download of %s weights skipped: %s is already cached", name, path)
        return path

    path.parent.mkdir(parents=True, exist_ok=True)
    hash_match = torch.hub.HASH_REGEX.search(path.name)
    hash_prefix = hash_match.group(1) if hash_match else None
    logger.info("Downloading %s weights from %s to %s", name, entry.weights.url, path)

    # download_url_to_file writes to a temporary file and moves it into place at the end,
    # so a failed download leaves no partial file at `path`.
    try:
        torch.hub.download_url_to_file(entry.weights.url, str(path), hash_prefix, progress=True)
    except (OSError, RuntimeError) as exc:
        raise ModelError(
            f"download of {name} weights from {entry.weights.url} failed: {exc}. Check the "
            f"network connection, or download the file on another machine and copy it to {path}."
        ) from exc
    return path


def _register_torchvision_backbones() -> None:
    for name, entry in TORCHVISION_BACKBONES.items():
        spec = BackboneSpec(
            name=name,
            build=functools.partial(create_torchvision_backbone, name),
            description=entry.description,
        )
        register_backbone(spec)


_register_torchvision_backbones()
