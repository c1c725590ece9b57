"""Local training and evaluation of a transfer model's trainable part on cached features."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedgraft.client.proximal import proximal_term
from fedgraft.models.transfer import TransferModel

# Maps a batch of stored inputs to what the trainable part consumes. With the feature
# cache the stored inputs already are that, so the default is the identity.
Encoder = Callable[[torch.Tensor], torch.Tensor]

__all__ = ["Encoder", "LocalResult", "SGDSettings", "evaluate_features", "make_optimizer", "train_on_features"]


@dataclass(frozen=True)
class SGDSettings:
    """Settings of a client's local training in one round."""

    epochs: int
    batch_size: int
    learning_rate: float
    optimizer: str = "adam"  # adam or sgd
    momentum: float = 0.9
    weight_decay: float = 0.0
    proximal_mu: float = 0.0  # FedProx mu; 0 disables the proximal term


@dataclass(frozen=True)
class LocalResult:
    """Mean loss and accuracy over the examples a client trained or evaluated on."""

    loss: float
    accuracy: float
    num_examples: int


def make_optimizer(parameters, settings: SGDSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            parameters, lr=settings.learning_rate, momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    if settings.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    raise ValueError(f"optimizer is {settings.optimizer!r}, expected adam or sgd")


def train_on_features(
    model: TransferModel,
    features: torch.Tensor,
    labels: torch.Tensor,
    settings: SGDSettings,
    generator: torch.Generator,
    encode: Encoder | None = None,
) -> LocalResult:
    """Train the trainable part of `model` on frozen-part outputs for `settings.epochs` epochs.

    Each epoch visits every example once in an order drawn from `generator`. With
    `proximal_mu > 0` the FedProx term pulls the weights towards the values they had
    when this call started, which are the round's global weights.
    """
    num_examples = len(labels)
    if num_examples == 0:
        return LocalResult(0.0, 0.0, 0)

    trainable = [p for p in model.parameters() if p.requires_grad]
    anchors = [p.detach().clone() for p in trainable]
    optimizer = make_optimizer(trainable, settings)

    model.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for _ in range(settings.epochs):
        order = torch.randperm(num_examples, generator=generator)
        for start in range(0, num_examples, settings.batch_size):
            batch = order[start:start + settings.batch_size]
            inputs = features[batch] if encode is None else encode(features[batch])
            logits = model.forward_from_features(inputs)
            loss = F.cross_entropy(logits, labels[batch])
            if settings.proximal_mu > 0:
                loss = loss + proximal_term(trainable, anchors, settings.proximal_mu)

            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

            loss_sum += loss.item() * len(batch)
            correct += (logits.argmax(dim=1) == labels[batch]).sum().item()
            seen += len(batch)
    return LocalResult(loss_sum / seen, correct / seen, num_examples)


@torch.no_grad()
def evaluate_features(
    model: TransferModel,
    features: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int = 512,
    encode: Encoder | None = None,
) -> LocalResult:
    """Return the loss and accuracy of `model` on frozen-part outputs."""
    num_examples = len(labels)
    if num_examples == 0:
        return LocalResult(0.0, 0.0, 0)
    model.eval()
    loss_sum, correct = 0.0, 0
    for start in range(0, num_examples, batch_size):
        inputs = features[start:start + batch_size]
        logits = model.forward_from_features(inputs if encode is None else encode(inputs))
        target = labels[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    return LocalResult(loss_sum / num_examples, correct / num_examples, num_examples)
