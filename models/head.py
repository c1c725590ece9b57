"""Classification heads that map pooled backbone features to class logits."""

from __future__ import annotations

from collections import OrderedDict
from enum import Enum

from torch import nn

__all__ = ["HeadKind", "create_head"]


class HeadKind(str, Enum):
    """Architecture of the classification head."""

    LINEAR = "linear"  # dropout, then one linear layer
    MLP = "mlp"  # linear, ReLU, dropout, linear


def _parse_head_kind(kind: HeadKind | str) -> HeadKind:
    try:
        return HeadKind(kind)
    except ValueError:
        choices = ", ".join(member.value for member in HeadKind)
        raise ValueError(f"unknown head kind {kind!r}: expected one of {choices}") from None


def create_head(
    kind: HeadKind | str,
    in_features: int,
    num_classes: int,
    hidden_features: int = 256,
    dropout: float = 0.0,
) -> nn.Module:
    """Build a head that maps (N, in_features) to (N, num_classes) logits.

    The head is an nn.Sequential with named layers, so its state-dict keys
    ("fc.weight", "fc1.weight", ...) do not depend on the dropout value.
    `hidden_features` applies to the MLP head only.
    """
    kind = _parse_head_kind(kind)
    if in_features < 1:
        raise ValueError(f"in_features must be >= 1, got {in_features}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")

    if kind is HeadKind.LINEAR:
        layers = OrderedDict(
            dropout=nn.Dropout(dropout),
            fc=nn.Linear(in_features, num_classes),
        )
        return nn.Sequential(layers)

    if hidden_features < 1:
        raise ValueError(f"hidden_features must be >= 1 for an MLP head, got {hidden_features}")
    layers = OrderedDict(
        fc1=nn.Linear(in_features, hidden_features),
        act=nn.ReLU(),
        dropout=nn.Dropout(dropout),
        fc2=nn.Linear(hidden_features, num_classes),
    )
    return nn.Sequential(layers)
