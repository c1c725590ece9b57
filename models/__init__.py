"""Pretrained backbones, classification heads and the transfer model that joins them."""

from .efficientnet_lite import imagenet_classifier
from .errors import ModelError
from .head import HeadKind, create_head
from .preprocess import preprocess_images
from .registry import (
    Backbone,
    BackboneSpec,
    available_backbones,
    backbone_spec,
    create_backbone,
    register_backbone,
)
from .torchvision_backbones import download_torchvision_weights
from .transfer import TrainingMode, TransferModel

__all__ = [
    "Backbone",
    "BackboneSpec",
    "HeadKind",
    "ModelError",
    "TrainingMode",
    "TransferModel",
    "available_backbones",
    "backbone_spec",
    "create_backbone",
    "create_head",
    "download_torchvision_weights",
    "imagenet_classifier",
    "preprocess_images",
    "register_backbone",
]
