"""Robust strategies behind the guards, with one poisoned node among ten replies."""

import numpy as np
import pytest
from flower_messages import StaticGrid, array_record, train_reply
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum
from flwr.supercore.task_identity import TaskIdentity

from fedgraft.client.poisoning import Poison, poison_update
from fedgraft.strategies.guarded import GuardedStrategy, RejectedReply

NODES = list(range(1, 11))
POISONED_NODE = 4
GLOBAL = {"w": np.linspace(-1.0, 1.0, 12, dtype=np.float32).reshape(3, 4)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Messages created on the server side read the run and node ids of the current task.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def trained_arrays() -> dict[int, dict[str, np.ndarray]]:
    """Return each node's honest result: a shared step of 0.1 plus node noise of stddev 0.02."""
    rng = np.random.default_rng(7)
    return {
        node: {"w": (GLOBAL["w"] + 0.1 + rng.normal(0.0, 0.02, GLOBAL["w"].shape)).astype(np.float32)}
        for node in NODES
    }


def aggregate(strategy, arrays_by_node: dict[int, dict[str, np.ndarray]]) -> np.ndarray | None:
    guarded = GuardedStrategy(strategy)
    list(guarded.configure_train(1, array_record(GLOBAL), ConfigRecord(), StaticGrid(NODES)))
    replies = [train_reply(node, arrays, 100) for node, arrays in arrays_by_node.items()]
    arrays, _ = guarded.aggregate_train(1, replies)
    return None if arrays is None else arrays["w"].numpy()


def poisoned(poison: str) -> dict[int, dict[str, np.ndarray]]:
    arrays = trained_arrays()
    arrays[POISONED_NODE] = poison_update(arrays[POISONED_NODE], GLOBAL, Poison.parse(poison))
    return arrays


ROBUST = {
    "fedmedian": lambda: FedMedian(min_available_nodes=10),
    "fedtrimmedavg": lambda: FedTrimmedAvg(beta=0.2, min_available_nodes=10),
    "krum": lambda: Krum(num_malicious_nodes=1, min_available_nodes=10),
}


@pytest.mark.parametrize("poison", ["scale:100", "sign-flip"])
@pytest.mark.parametrize("name", sorted(ROBUST))
def test_robust_aggregate_near_clean_mean(name, poison):
    clean = aggregate(FedAvg(min_available_nodes=10), trained_arrays())

    robust = aggregate(ROBUST[name](), poisoned(poison))

    # The honest nodes' spread is 0.02 per entry, while a x100 update moves by 10.
    np.testing.assert_allclose(robust, clean, atol=0.05)


def test_fedavg_moved_by_scaled_node():
    clean = aggregate(FedAvg(min_available_nodes=10), trained_arrays())

    attacked = aggregate(FedAvg(min_available_nodes=10), poisoned("scale:100"))

    # One of ten equal weights: about (100 - 1) * 0.1 / 10 = 0.99 per entry.
    assert np.abs(attacked - clean).mean() > 0.9


@pytest.mark.parametrize("name", ["fedavg", *sorted(ROBUST)])
def test_nan_node_rejected_and_named(name):
    factory = ROBUST.get(name, lambda: FedAvg(min_available_nodes=10))
    guarded = GuardedStrategy(factory())
    list(guarded.configure_train(1, array_record(GLOBAL), ConfigRecord(), StaticGrid(NODES)))
    replies = [train_reply(node, arrays, 100) for node, arrays in poisoned("nan").items()]

    arrays, _ = guarded.aggregate_train(1, replies)

    assert guarded.rejected == [RejectedReply(POISONED_NODE, "parameter 'w' contains NaN or Inf")]
    assert np.isfinite(arrays["w"].numpy()).all()
