"""Aggregation guards around Flower's strategies: weights, NaN/Inf, zero examples, buffers."""

import numpy as np
import pytest
from flower_messages import StaticGrid, array_record, evaluate_reply, train_reply
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedMedian, FedTrimmedAvg
from flwr.supercore.task_identity import TaskIdentity

from fedgraft.strategies.guarded import GuardedStrategy

W = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
BN_MEAN = np.array([0.0, 0.0], dtype=np.float32)
COUNTER = np.array(10, dtype=np.int64)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Messages created on the server side read the run and node ids of the current task.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def global_arrays(**extra) -> ArrayRecord:
    return array_record({"w": W, **extra})


def configured(strategy: GuardedStrategy, arrays: ArrayRecord, nodes=(1, 2)) -> list:
    return list(strategy.configure_train(1, arrays, ConfigRecord(), StaticGrid(list(nodes))))


def test_weights_are_example_counts():
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))
    configured(strategy, global_arrays())
    replies = [train_reply(1, {"w": np.zeros_like(W)}, 1), train_reply(2, {"w": np.full_like(W, 4.0)}, 3)]

    arrays, _ = strategy.aggregate_train(1, replies)

    # (1 * 0 + 3 * 4) / 4 = 3 in every entry.
    np.testing.assert_allclose(arrays["w"].numpy(), np.full_like(W, 3.0))


def test_all_zero_examples_keeps_previous_model():
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))
    configured(strategy, global_arrays())
    replies = [train_reply(1, {"w": W + 1}, 0), train_reply(2, {"w": W + 2}, 0)]

    arrays, metrics = strategy.aggregate_train(1, replies)

    assert arrays is None
    assert metrics is None
    assert [r.reason for r in strategy.rejected] == ["reported 0 training examples"] * 2


def test_zero_example_client_not_averaged_in():
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))
    configured(strategy, global_arrays())
    replies = [train_reply(1, {"w": W + 100}, 0), train_reply(2, {"w": W + 2}, 5)]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["w"].numpy(), W + 2)
    assert [(r.node_id, r.reason) for r in strategy.rejected] == [(1, "reported 0 training examples")]


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_update_rejected(bad_value):
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))
    configured(strategy, global_arrays(), nodes=(1, 2, 3))
    poisoned = W.copy()
    poisoned[0, 1] = bad_value
    replies = [
        train_reply(1, {"w": W + 1}, 2),
        train_reply(2, {"w": poisoned}, 2),
        train_reply(3, {"w": W + 3}, 2),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["w"].numpy(), W + 2)
    assert len(strategy.rejected) == 1
    assert strategy.rejected[0].node_id == 2
    assert "'w' contains NaN or Inf" in strategy.rejected[0].reason


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"w": np.zeros((3, 2), dtype=np.float32)}, "parameter 'w' has shape (3, 2), expected (2, 3)"),
        ({"v": W}, "missing parameter 'w'"),
        ({"w": W, "extra": W}, "unexpected parameter 'extra'"),
        ({"w": W.astype(np.float64)}, "parameter 'w' has dtype float64, expected float32"),
    ],
)
def test_mismatched_update_rejected_naming_key(arrays, expected):
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))
    configured(strategy, global_arrays())
    replies = [train_reply(1, arrays, 4), train_reply(2, {"w": W + 1}, 4)]

    aggregated, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(aggregated["w"].numpy(), W + 1)
    assert len(strategy.rejected) == 1
    assert strategy.rejected[0].reason.startswith(expected)


def test_server_optimizer_skips_batchnorm_buffers():
    inner = FedAdam(min_available_nodes=2, eta=0.1, beta_1=0.0, beta_2=0.0, tau=1e-3)
    strategy = GuardedStrategy(inner, buffer_keys=frozenset({"bn.running_mean", "bn.num_batches_tracked"}))
    start = global_arrays(**{"bn.running_mean": BN_MEAN, "bn.num_batches_tracked": COUNTER})
    messages = configured(strategy, start)

    # Every node still receives the buffers it must load.
    assert set(messages[0].content["arrays"].keys()) == {"w", "bn.running_mean", "bn.num_batches_tracked"}
    # The wrapped strategy saw only the real parameter.
    assert set(inner.current_arrays) == {"w"}

    replies = [
        train_reply(1, {"w": W + 1, "bn.running_mean": np.array([1.0, 2.0], np.float32),
                        "bn.num_batches_tracked": np.array(13, np.int64)}, 1),
        train_reply(2, {"w": W + 1, "bn.running_mean": np.array([3.0, 6.0], np.float32),
                        "bn.num_batches_tracked": np.array(16, np.int64)}, 3),
    ]
    arrays, _ = strategy.aggregate_train(1, replies)

    # Buffers: plain sample-weighted means, (1*1 + 3*3)/4 = 2.5 and (1*2 + 3*6)/4 = 5.
    np.testing.assert_allclose(arrays["bn.running_mean"].numpy(), [2.5, 5.0])
    # Integer counters stay integer: (13 + 3*16)/4 = 15.25 rounds to 15.
    counter = arrays["bn.num_batches_tracked"].numpy()
    assert counter.dtype == np.int64
    assert counter.shape == ()
    assert int(counter) == 15
    # The parameter moved by FedAdam's step, not to the plain mean W + 1.
    moved = arrays["w"].numpy()
    assert not np.allclose(moved, W + 1)
    assert np.all(moved > W)


@pytest.mark.parametrize("inner_cls", [FedMedian, FedTrimmedAvg])
def test_robust_strategies_run_behind_guards(inner_cls):
    strategy = GuardedStrategy(inner_cls(min_available_nodes=3))
    configured(strategy, global_arrays(), nodes=(1, 2, 3))
    replies = [train_reply(i, {"w": W + i}, 2) for i in (1, 2, 3)]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["w"].numpy(), W + 2)


def test_evaluate_ignores_zero_example_replies():
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))
    replies = [evaluate_reply(1, 0, **{"val-accuracy": 0.0}), evaluate_reply(2, 4, **{"val-accuracy": 0.75})]

    metrics = strategy.aggregate_evaluate(1, replies)

    assert metrics["val-accuracy"] == pytest.approx(0.75)


def test_evaluate_with_no_examples_returns_none():
    strategy = GuardedStrategy(FedAvg(min_available_nodes=2))

    assert strategy.aggregate_evaluate(1, [evaluate_reply(1, 0, **{"val-accuracy": 0.0})]) is None
