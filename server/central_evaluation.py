"""Centralized evaluation of the global model on the server's held-out test data."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, MetricRecord

from fedgraft.client.training import evaluate_features
from fedgraft.models.state import to_state_dict
from fedgraft.models.transfer import TransferModel

__all__ = ["CentralEvaluator"]


class CentralEvaluator:
    """Evaluate global arrays on test features that were computed once."""

    def __init__(self, model: TransferModel, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.model = model
        self.features = features
        self.labels = labels

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Return test loss and accuracy of `arrays`; the signature is Flower's `evaluate_fn`."""
        self.model.load_trainable_state_dict(to_state_dict(arrays))
        result = evaluate_features(self.model, self.features, self.labels)
        return MetricRecord({"test-loss": result.loss, "test-accuracy": result.accuracy})
