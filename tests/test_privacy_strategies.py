"""Flower's DP wrappers as fedgraft builds them: clipping, noise, weights, config checks."""

import numpy as np
import pytest
from flower_messages import StaticGrid, array_record, train_reply
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from flwr.supercore.task_identity import TaskIdentity

from fedgraft.config import ConfigError, RunConfig
from fedgraft.strategies.guarded import GuardedStrategy
from fedgraft.strategies.privacy import UniformNodeWeights, wrap_with_privacy
from fedgraft.strategies.registry import build_strategy

# A 2-entry model whose global value is zero, so an update equals the reply's arrays.
ZERO = {"a": np.zeros(1, dtype=np.float32), "b": np.zeros(1, dtype=np.float32)}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Messages created on the server side read the run and node ids of the current task.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


def dp_strategy(mode: str, noise: float = 0.0, clip: float = 1.0, nodes: int = 2, **options) -> GuardedStrategy:
    cfg = RunConfig(dp=mode, dp_noise_multiplier=noise, dp_clipping_norm=clip, **options)
    return GuardedStrategy(wrap_with_privacy(FedAvg(min_available_nodes=nodes), cfg, num_sampled_nodes=nodes))


def configure(strategy, arrays, nodes=(1, 2)) -> list:
    return list(strategy.configure_train(1, array_record(arrays), ConfigRecord(), StaticGrid(list(nodes))))


@pytest.mark.parametrize(
    ("mode", "wrapper"),
    [
        ("server-fixed", DifferentialPrivacyServerSideFixedClipping),
        ("server-adaptive", DifferentialPrivacyServerSideAdaptiveClipping),
        ("client-fixed", DifferentialPrivacyClientSideFixedClipping),
        ("client-adaptive", DifferentialPrivacyClientSideAdaptiveClipping),
    ],
)
def test_build_strategy_wraps_each_mode(mode, wrapper):
    strategy = build_strategy(RunConfig(dp=mode, dp_noise_multiplier=0.5))

    assert isinstance(strategy, UniformNodeWeights)
    assert isinstance(strategy.inner, wrapper)
    assert isinstance(strategy.inner.strategy, FedAvg)
    assert strategy.inner.num_sampled_clients == 10


def test_build_strategy_without_dp_is_plain():
    assert type(build_strategy(RunConfig())) is FedAvg


def test_server_fixed_clips_then_averages_unweighted():
    strategy = dp_strategy("server-fixed", clip=1.0)
    configure(strategy, ZERO)
    # Node 1's update (3, 4) has norm 5 and is scaled to (0.6, 0.8); node 2's (0.3, 0)
    # is within the norm. Equal weights despite 1 and 3 examples: ((0.6 + 0.3) / 2, 0.8 / 2).
    replies = [
        train_reply(1, {"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float32)}, 1),
        train_reply(2, {"a": np.array([0.3], np.float32), "b": np.array([0.0], np.float32)}, 3),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["a"].numpy(), [0.45], rtol=1e-6)
    np.testing.assert_allclose(arrays["b"].numpy(), [0.4], rtol=1e-6)


def test_server_fixed_pairs_arrays_by_key_not_position():
    strategy = dp_strategy("server-fixed", clip=100.0)
    configure(strategy, {"a": np.zeros(1, np.float32), "b": np.full(1, 10.0, np.float32)})
    # The reply lists b before a. Paired by position, a would be clipped against b's 10.
    reply = {"b": np.array([10.0], np.float32), "a": np.array([1.0], np.float32)}

    arrays, _ = strategy.aggregate_train(1, [train_reply(1, reply, 5), train_reply(2, reply, 5)])

    np.testing.assert_allclose(arrays["a"].numpy(), [1.0])
    np.testing.assert_allclose(arrays["b"].numpy(), [10.0])


def test_noise_stddev_is_multiplier_clip_over_nodes():
    strategy = dp_strategy("server-fixed", noise=1.0, clip=2.0)
    configure(strategy, {"w": np.zeros(20_000, dtype=np.float32)})
    update = {"w": np.full(20_000, 1e-3, dtype=np.float32)}

    arrays, _ = strategy.aggregate_train(1, [train_reply(1, update, 4), train_reply(2, update, 4)])

    # The mean update is 1e-3; the noise's stddev is 1.0 * 2.0 / 2 nodes = 1.0.
    noise = arrays["w"].numpy() - 1e-3
    assert noise.std() == pytest.approx(1.0, rel=0.03)
    assert abs(noise.mean()) < 0.05


def test_noise_not_replayable_from_seed():
    update = {"w": np.full(100, 1e-3, dtype=np.float32)}
    results = []
    for _ in range(2):
        np.random.seed(0)
        strategy = dp_strategy("server-fixed", noise=1.0)
        configure(strategy, {"w": np.zeros(100, dtype=np.float32)})
        arrays, _ = strategy.aggregate_train(1, [train_reply(1, update, 4), train_reply(2, update, 4)])
        results.append(arrays["w"].numpy())
        # The seeded generator is left where it was, so the rest of the run stays repeatable.
        assert np.random.random() == np.random.RandomState(0).random()

    assert not np.array_equal(results[0], results[1])


def test_zero_update_dropped_not_divided_by():
    strategy = dp_strategy("server-fixed", clip=1.0)
    configure(strategy, ZERO)
    replies = [
        train_reply(1, ZERO, 2),
        train_reply(2, {"a": np.array([0.5], np.float32), "b": np.array([0.0], np.float32)}, 2),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    np.testing.assert_allclose(arrays["a"].numpy(), [0.5])


def test_client_fixed_server_only_adds_noise():
    strategy = dp_strategy("client-fixed", clip=0.7)
    messages = configure(strategy, ZERO)

    assert [m.content["config"]["clipping_norm"] for m in messages] == [0.7, 0.7]

    # The server trusts the nodes to clip: an unclipped (3, 4) passes through unchanged.
    replies = [train_reply(n, {"a": np.array([3.0], np.float32), "b": np.array([4.0], np.float32)}, 2) for n in (1, 2)]
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["b"].numpy(), [4.0])


def test_server_adaptive_lowers_norm_when_all_clipped():
    strategy = dp_strategy("server-adaptive", clip=1.0, dp_clipped_count_stddev=1e-9)
    configure(strategy, ZERO)
    big = {"a": np.array([30.0], np.float32), "b": np.array([40.0], np.float32)}

    strategy.aggregate_train(1, [train_reply(1, big, 2), train_reply(2, big, 2)])

    # Every update was clipped: norm * exp(-0.2 * (1 - 0.5)) = exp(-0.1).
    assert strategy.inner.inner.clipping_norm == pytest.approx(np.exp(-0.1), rel=1e-6)


def test_nan_reply_rejected_before_dp():
    strategy = dp_strategy("server-fixed", clip=1.0)
    configure(strategy, ZERO)
    replies = [
        train_reply(1, {"a": np.array([np.nan], np.float32), "b": np.array([0.0], np.float32)}, 2),
        train_reply(2, {"a": np.array([0.5], np.float32), "b": np.array([0.0], np.float32)}, 2),
    ]

    arrays, _ = strategy.aggregate_train(1, replies)

    assert [(r.node_id, r.reason) for r in strategy.rejected] == [(1, "parameter 'a' contains NaN or Inf")]
    np.testing.assert_allclose(arrays["a"].numpy(), [0.5])


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dp": "on"}, "--dp is 'on', expected one of: server-fixed"),
        ({"dp": "server-fixed", "strategy": "fedmedian"}, "use --strategy fedavg or fedprox"),
        ({"dp": "server-fixed", "mode": "fine-tune"}, "use --mode feature-extraction"),
        ({"dp": "client-fixed", "dp_clipping_norm": 0.0}, "--dp-clipping-norm is 0.0, expected an L2 norm > 0"),
        ({"dp": "client-fixed", "dp_noise_multiplier": -1.0}, "--dp-noise-multiplier is -1.0"),
        ({"dp": "server-adaptive"}, "raise --dp-clipped-count-stddev above 0.5"),
        ({"dp": "client-adaptive", "dp_noise_multiplier": 0.5, "dp_target_quantile": 1.5}, "--dp-target-quantile"),
        ({"dp": "client-adaptive", "dp_noise_multiplier": 0.5, "dp_clip_norm_lr": 0.0}, "--dp-clip-norm-lr"),
    ],
)
def test_config_rejects_bad_dp(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options).validate()


def test_config_accepts_adaptive_with_count_noise():
    RunConfig(dp="server-adaptive", dp_noise_multiplier=1.0, dp_clipped_count_stddev=1.0).validate()
