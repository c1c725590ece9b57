"""The FedProx proximal term and its use in local training."""

import pytest
import torch

from fedgraft.client.proximal import proximal_term


def test_proximal_term_equals_hand_computation():
    weights = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[0.5, -0.5]])]
    anchors = [torch.tensor([0.0, 2.0, 5.0]), torch.tensor([[0.0, 0.0]])]

    # ||w - w_g||^2 = (1 + 0 + 4) + (0.25 + 0.25) = 5.5; mu/2 * 5.5 with mu = 0.1 is 0.275.
    term = proximal_term(weights, anchors, mu=0.1)

    assert term.item() == pytest.approx(0.275)


def test_proximal_term_zero_at_global_weights():
    weights = [torch.randn(4, 3)]

    assert proximal_term(weights, [weights[0].clone()], mu=1.0).item() == 0.0


def test_proximal_gradient_flows_to_weights_only():
    weight = torch.tensor([2.0, -1.0], requires_grad=True)
    anchor = torch.tensor([1.0, 1.0])

    proximal_term([weight], [anchor], mu=0.5).backward()

    # d/dw mu/2 ||w - a||^2 = mu (w - a) = 0.5 * [1, -2].
    torch.testing.assert_close(weight.grad, torch.tensor([0.5, -1.0]))
    assert anchor.grad is None


def test_proximal_term_rejects_length_mismatch():
    with pytest.raises(ValueError, match="2 parameters but 1 global"):
        proximal_term([torch.zeros(1), torch.zeros(1)], [torch.zeros(1)], mu=1.0)
