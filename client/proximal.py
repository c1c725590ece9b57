"""The FedProx proximal term that a client adds to its local loss."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["proximal_term"]


def proximal_term(
    parameters: Sequence[torch.Tensor], global_parameters: Sequence[torch.Tensor], mu: float
) -> torch.Tensor:
    """Return mu/2 * sum ||w - w_global||^2 over matching tensors (Li et al., 2020, FedProx).

    `global_parameters` must be detached copies of the round's global weights, so the
    gradient flows into `parameters` only.
    """
    if len(parameters) != len(global_parameters):
        raise ValueError(
            f"proximal term got {len(parameters)} parameters but {len(global_parameters)} global ones"
        )
    total = torch.zeros(())
    for weight, anchor in zip(parameters, global_parameters):
        total = total + torch.sum((weight - anchor) ** 2)
    return 0.5 * mu * total
