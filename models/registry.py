"""Backbone interface, the backbone registry and loading of weights files.

A backbone is registered once as a BackboneSpec and built by name with `create_backbone`.
The built-in backbones (EfficientNet-Lite0 and the torchvision models) register themselves
when their modules are imported, which `available_backbones` and `create_backbone` do
on first use.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ModelError

__all__ = [
    "WEIGHTS_IMAGENET",
    "WEIGHTS_RANDOM",
    "Backbone",
    "BackboneSpec",
    "available_backbones",
    "backbone_spec",
    "create_backbone",
    "load_weights_file",
    "read_state_dict",
    "register_backbone",
]

logger = logging.getLogger(__name__)

# Values of the `weights` argument that are keywords, not file paths. A Path object is
# always read as a file path, even one named "imagenet".
WEIGHTS_IMAGENET = "imagenet"
WEIGHTS_RANDOM = "random"

# Modules that call register_backbone when imported.
_BUILTIN_MODULES = ("efficientnet_lite", "torchvision_backbones", "small_cnn")

# Checkpoint entries that wrap the state dict in files written by common training loops.
_WRAPPER_KEYS = ("state_dict", "model")


class Backbone(nn.Module):
    """Pretrained feature extractor split into a plain chain of blocks.

    ``x -> blocks[0] -> ... -> blocks[-1]`` gives a (N, C, h, w) feature map and
    `forward` pools it to (N, num_features). The chain lets a transfer model freeze a
    prefix of the blocks and train the rest.

    Parameters
    ----------
    name : str
        Registry name of the backbone.
    blocks : sequence of nn.Module
        The chain, in the order the input passes through it.
    num_features : int
        Channels C of the last block's output, which is the size of the pooled vector.
    input_mean, input_std : tuple of 3 floats
        Per-channel normalisation that the weights expect, applied to RGB in [0, 1].
    """

    def __init__(
        self,
        name: str,
        blocks: Sequence[nn.Module],
        num_features: int,
        input_mean: Sequence[float],
        input_std: Sequence[float],
    ) -> None:
        super().__init__()
        if len(blocks) == 0:
            raise ValueError(f"backbone {name!r} needs at least one block, got none")
        if num_features < 1:
            raise ValueError(f"backbone {name!r}: num_features must be >= 1, got {num_features}")
        if len(input_mean) != 3 or len(input_std) != 3:
            raise ValueError(
                f"backbone {name!r}: input_mean and input_std need one value per RGB channel, "
                f"got {len(input_mean)} and {len(input_std)} values"
            )

        self.name = name
        self.blocks = nn.ModuleList(blocks)
        self.num_features = num_features
        self.input_mean: tuple[float, float, float] = (
            float(input_mean[0]),
            float(input_mean[1]),
            float(input_mean[2]),
        )
        self.input_std: tuple[float, float, float] = (
            float(input_std[0]),
            float(input_std[1]),
            float(input_std[2]),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Run the chain on (N, 3, H, W) images and return pooled features (N, num_features)."""
        for block in self.blocks:
            x = block(x)
        return self.pool(x)

    def pool(self, feature_map: Tensor) -> Tensor:
        """Average a (N, C, h, w) feature map over h and w and return (N, C)."""
        return torch.flatten(F.adaptive_avg_pool2d(feature_map, 1), 1)


@dataclass(frozen=True)
class BackboneSpec:
    """Registry entry: how to build one backbone by name."""

    # Name used by create_backbone, the CLI and run configs.
    name: str
    # Builds the backbone from "imagenet", "random" or the path of a state-dict file.
    build: Callable[[str | Path], Backbone]
    # One-line summary for listings, such as the feature count and where the weights come from.
    description: str


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec) -> BackboneSpec:
    """Add a backbone to the registry and return the spec unchanged.

    Raises ValueError if the name is already registered.
    """
    if spec.name in _REGISTRY:
        raise ValueError(
            f"backbone {spec.name!r} is already registered. Pick another name for the new spec."
        )
    _REGISTRY[spec.name] = spec
    return spec


def _import_builtin_backbones() -> None:
    # Imported on first use, not at the top, because these modules import Backbone from
    # here. Python caches the import, so later calls cost a dictionary lookup.
    for module_name in _BUILTIN_MODULES:
        importlib.import_module(f"{__package__}.{module_name}")


def available_backbones() -> list[str]:
    """Return the registered backbone names, sorted."""
    _import_builtin_backbones()
    return sorted(_REGISTRY)


def backbone_spec(name: str) -> BackboneSpec:
    """Return the registry entry for `name`, or raise ModelError listing the known names."""
    _import_builtin_backbones()
    spec = _REGISTRY.get(name)
    if spec is None:
        known = ", ".join(sorted(_REGISTRY))
        raise ModelError(
            f"unknown backbone {name!r}: expected one of {known}. "
            f"Pick one of these names, or register a new BackboneSpec with register_backbone."
        )
    return spec


def create_backbone(name: str, weights: str | Path = WEIGHTS_IMAGENET) -> Backbone:
    """Build the backbone `name` with its weights.

    `weights` is "imagenet" for the pretrained weights, "random" for random
    initialisation, or the path of a state-dict file. Raises ModelError for an unknown
    name, missing weights or a weights file that does not fit.
    """
    spec = backbone_spec(name)
    if not isinstance(weights, str | Path):
        raise TypeError(
            f"weights must be 'imagenet', 'random' or a file path, got {type(weights).__name__}"
        )
    return spec.build(weights)


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a state dict from a file written by torch.save, without running pickled code.

    The file may contain a plain state dict or a checkpoint dict with a "state_dict" or
    "model" entry. Raises ModelError naming the path when the file is missing, cannot be
    read or does not contain a mapping from names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"weights file {path} not found: pass the path of an existing state-dict file, "
            f"or weights='imagenet' or 'random'"
        )

    # weights_only=True refuses pickled objects other than tensors and containers. A file
    # that is not a checkpoint makes torch.load raise many different types (UnpicklingError,
    # EOFError, RuntimeError, even IndexError from its unpickler), hence the broad except.
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(
            f"weights file {path} could not be read with torch.load(weights_only=True): "
            f"{reason}. Expected a state dict saved with torch.save(model.state_dict(), path)."
        ) from exc

    if isinstance(loaded, Mapping):
        for wrapper_key in _WRAPPER_KEYS:
            if isinstance(loaded.get(wrapper_key), Mapping):
                loaded = loaded[wrapper_key]
                break

    # A state dict maps str names to tensors; anything else is some other object.
    if not isinstance(loaded, Mapping) or len(loaded) == 0:
        raise ModelError(
            f"weights file {path} does not contain a state dict: found "
            f"{type(loaded).__name__}{' (empty)' if isinstance(loaded, Mapping) else ''}. "
            f"Expected a dict of tensors saved with torch.save(model.state_dict(), path)."
        )
    for key, value in loaded.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise ModelError(
                f"weights file {path} is not a state dict: entry {key!r} is a "
                f"{type(value).__name__}, expected a tensor"
            )
    return dict(loaded)


def _first_mismatch(state: Mapping[str, Tensor], expected: Mapping[str, Tensor]) -> str | None:
    """Describe the first key that is missing, unexpected or of the wrong shape."""
    for key, target in expected.items():
        if key not in state:
            return f"missing key {key!r}"
        if state[key].shape != target.shape:
            return (
                f"key {key!r} has shape {tuple(state[key].shape)} "
                f"but the model expects {tuple(target.shape)}"
            )
    for key in state:
        if key not in expected:
            return f"unexpected key {key!r}"
    return None


def _source_key_map(source_model: nn.Module, backbone: Backbone) -> dict[str, str]:
    """Map the source model's state-dict keys to the backbone's keys for the same tensors.

    The backbone's blocks are modules taken from the source model, so each shared
    parameter or buffer is the same object under two names. Keys of the source model
    that the backbone dropped (its classifier) are left out.
    """
    backbone_keys = {id(t): key for key, t in backbone.state_dict(keep_vars=True).items()}
    return {
        key: backbone_keys[id(t)]
        for key, t in source_model.state_dict(keep_vars=True).items()
        if id(t) in backbone_keys
    }


def load_weights_file(
    backbone: Backbone, path: str | Path, source_model: nn.Module | None = None
) -> None:
    """Load a state-dict file into the backbone in place.

    Two layouts are accepted. A file saved from a Backbone has keys starting with
    "blocks.". A file in the layout of `source_model`, the original model that the
    backbone's blocks were taken from, may contain that model's classifier keys, which are
    ignored whatever their shapes. Raises ModelError naming the path and the first key
    that is missing, unexpected or of the wrong shape.
    """
    path = Path(path)
    state = read_state_dict(path)
    expected = backbone.state_dict()
    layout = f"a {backbone.name} Backbone"

    if source_model is not None and not any(key.startswith("blocks.") for key in state):
        key_map = _source_key_map(source_model, backbone)
        dropped = set(source_model.state_dict()) - set(key_map)
        state = {key: value for key, value in state.items() if key not in dropped}
        expected = {source_key: expected[key] for source_key, key in key_map.items()}
        layout = f"the original {backbone.name} model"
    else:
        key_map = {key: key for key in expected}

    mismatch = _first_mismatch(state, expected)
    if mismatch is not None:
        raise ModelError(
            f"weights file {path} does not fit backbone {backbone.name}: {mismatch} "
            f"(compared with the state dict of {layout}). Pass a file saved from "
            f"{backbone.name}, or pick the backbone that the file was saved from."
        )

    backbone.load_state_dict({key_map[key]: value for key, value in state.items()})
    logger.info("Loaded %s weights from %s", backbone.name, path)
