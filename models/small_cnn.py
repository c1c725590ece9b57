"""A small CNN trained from scratch: the baseline that shows what a pretrained backbone adds.

It has no pretrained weights. Train it with `--weights random --mode full`, usually at the
data's own size (`--image-size 28` for Fashion-MNIST).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import ModelError
from .registry import WEIGHTS_IMAGENET, WEIGHTS_RANDOM, Backbone, BackboneSpec, load_weights_file, register_backbone

__all__ = ["create_small_cnn"]

NAME = "small_cnn"
WIDTHS = (32, 64, 128)  # output channels of the three conv blocks


def _conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def create_small_cnn(weights: str | Path = WEIGHTS_RANDOM) -> Backbone:
    """Build the three-block CNN; `weights` is "random" or a file saved from this backbone."""
    if weights == WEIGHTS_IMAGENET:
        raise ModelError(
            f"{NAME} has no ImageNet weights: it is the from-scratch baseline; pass --weights random"
        )
    blocks = [
        _conv_block(3, WIDTHS[0], pool=True),
        _conv_block(WIDTHS[0], WIDTHS[1], pool=True),
        _conv_block(WIDTHS[1], WIDTHS[2], pool=False),
    ]
    backbone = Backbone(NAME, blocks, WIDTHS[-1], input_mean=(0.5, 0.5, 0.5), input_std=(0.5, 0.5, 0.5))
    if weights != WEIGHTS_RANDOM:
        load_weights_file(backbone, Path(weights))
    return backbone


register_backbone(
    BackboneSpec(
        name=NAME,
        build=create_small_cnn,
        description="three conv blocks, 128 features, random initialisation only (from-scratch baseline)",
    )
)
