"""--min-nodes: how many connected nodes a round waits for, so a run survives nodes that leave."""

import pytest

from fedgraft.config import ConfigError, RunConfig
from fedgraft.strategies.registry import build_strategy


def test_default_waits_for_every_node():
    strategy = build_strategy(RunConfig(num_clients=5))

    assert strategy.min_available_nodes == 5
    assert strategy.min_train_nodes == 5


def test_min_nodes_lowers_what_a_round_needs():
    strategy = build_strategy(RunConfig(num_clients=5, min_nodes=3))

    assert strategy.min_available_nodes == 3
    assert strategy.min_train_nodes == 3
    assert strategy.min_evaluate_nodes == 3
    assert strategy.fraction_train == 1.0  # every connected node still trains


@pytest.mark.parametrize("min_nodes", [-1, 6])
def test_min_nodes_outside_range_rejected(min_nodes):
    with pytest.raises(ConfigError, match=f"--min-nodes is {min_nodes}, expected an integer from 0"):
        RunConfig(num_clients=5, min_nodes=min_nodes).validate()
