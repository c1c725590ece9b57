"""Build the transfer model that a RunConfig describes."""

from __future__ import annotations

import torch

from fedgraft.config import RunConfig
from fedgraft.models.head import create_head
from fedgraft.models.registry import create_backbone
from fedgraft.models.transfer import TransferModel

__all__ = ["build_transfer_model"]


def build_transfer_model(cfg: RunConfig, num_classes: int, weights: str | None = None) -> TransferModel:
    """Create backbone and head for `cfg`; the head's initial weights follow `cfg.seed`.

    `weights` overrides `cfg.weights`. A client passes "random" because it fills the
    backbone from the weights the server sent right after building it.
    """
    backbone = create_backbone(cfg.backbone, weights if weights is not None else cfg.weights)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    head = create_head(cfg.head, backbone.num_features, num_classes, hidden_features=cfg.head_hidden)
    torch.random.set_rng_state(generator_state)
    return TransferModel(backbone, head, cfg.mode, trainable_blocks=cfg.trainable_blocks)
