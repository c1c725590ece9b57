"""Build the transfer model that a RunConfig describes."""

from __future__ import annotations

import torch
from torch import nn

from fedgraft.config import RunConfig
from fedgraft.models.head import create_head
from fedgraft.models.registry import create_backbone
from fedgraft.models.transfer import TransferModel

__all__ = ["build_transfer_model"]


def build_transfer_model(cfg: RunConfig, num_classes: int, weights: str | None = None) -> TransferModel:
    """Create backbone and head for `cfg`; the head's initial weights follow `cfg.seed`.

    `weights` overrides `cfg.weights`. A client passes "random" because it fills the
    backbone from the weights the server sent right after building it. A run on a
    task-incremental stream gets `TaskHeads`, one head of kind `cfg.head` per task.
    """
    backbone = create_backbone(cfg.backbone, weights if weights is not None else cfg.weights)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(cfg.seed)
    head = create_head(cfg.head, backbone.num_features, num_classes, hidden_features=cfg.head_hidden)
    if cfg.stream:
        head = _per_task_head(cfg, head, backbone.num_features, num_classes)
    torch.random.set_rng_state(generator_state)
    return TransferModel(backbone, head, cfg.mode, trainable_blocks=cfg.trainable_blocks)


def _per_task_head(cfg: RunConfig, first: nn.Module, in_features: int, num_classes: int) -> nn.Module:
    """Return `first` unchanged for a shared head, else TaskHeads with `first` as head 0."""
    # Imported here so that runs without a stream do not import Avalanche.
    from fedgraft.continual.task_heads import HeadLayout, TaskHeads, head_layout, num_task_heads

    if head_layout(cfg) is HeadLayout.SHARED:
        return first
    heads = [first]
    for _ in range(num_task_heads(cfg) - 1):
        heads.append(create_head(cfg.head, in_features, num_classes, hidden_features=cfg.head_hidden))
    return TaskHeads(heads, num_classes)
