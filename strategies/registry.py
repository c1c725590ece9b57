"""Flower's server strategies, selected by name and configured from a RunConfig."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    Strategy,
)

from fedgraft.config import RunConfig
from fedgraft.strategies.privacy import wrap_with_privacy

__all__ = ["StrategySpec", "STRATEGIES", "build_strategy", "min_available_nodes", "min_train_nodes"]


@dataclass(frozen=True)
class StrategySpec:
    """A strategy name, its Flower class and the RunConfig fields it reads."""

    name: str
    options: Callable[[RunConfig], dict]  # Flower constructor keyword arguments
    factory: type[Strategy]
    min_nodes: Callable[[RunConfig], int] = lambda cfg: 1  # nodes needed in one round
    description: str = ""


def _fedopt_options(cfg: RunConfig) -> dict:
    # eta_l only feeds Flower's own logging: the client's learning rate is `learning_rate`.
    return {"eta": cfg.server_learning_rate, "eta_l": cfg.learning_rate, "tau": cfg.tau}


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("fedavg", lambda cfg: {}, FedAvg, description="sample-weighted mean"),
        StrategySpec(
            "fedprox", lambda cfg: {"proximal_mu": cfg.proximal_mu}, FedProx,
            description="FedAvg; clients add mu/2 * ||w - w_global||^2",
        ),
        StrategySpec(
            "fedadam",
            lambda cfg: {**_fedopt_options(cfg), "beta_1": cfg.beta_1, "beta_2": cfg.beta_2},
            FedAdam, description="server-side Adam on the mean update",
        ),
        StrategySpec(
            "fedyogi",
            lambda cfg: {**_fedopt_options(cfg), "beta_1": cfg.beta_1, "beta_2": cfg.beta_2},
            FedYogi, description="server-side Yogi on the mean update",
        ),
        StrategySpec("fedadagrad", _fedopt_options, FedAdagrad, description="server-side Adagrad"),
        StrategySpec(
            "fedavgm",
            lambda cfg: {
                "server_learning_rate": cfg.server_learning_rate,
                "server_momentum": cfg.server_momentum,
            },
            FedAvgM, description="FedAvg with server momentum",
        ),
        StrategySpec("fedmedian", lambda cfg: {}, FedMedian, description="coordinate-wise median"),
        StrategySpec(
            "fedtrimmedavg", lambda cfg: {"beta": cfg.trim_beta}, FedTrimmedAvg,
            description="coordinate-wise trimmed mean",
        ),
        StrategySpec(
            "krum", lambda cfg: {"num_malicious_nodes": cfg.num_malicious_nodes}, Krum,
            # Krum's selection rule assumes n >= 2f + 3 (Blanchard et al., 2017).
            min_nodes=lambda cfg: 2 * cfg.num_malicious_nodes + 3,
            description="picks the update closest to its neighbours",
        ),
    )
}


def min_train_nodes(cfg: RunConfig) -> int:
    """Return how many nodes a round needs for training with this config."""
    nodes = max(1, math.floor(cfg.num_clients * cfg.fraction_train))
    return min(nodes, cfg.min_nodes) if cfg.min_nodes else nodes


def min_available_nodes(cfg: RunConfig) -> int:
    """Return how many connected nodes a round waits for: `min_nodes`, or all `num_clients`."""
    return cfg.min_nodes or cfg.num_clients


def build_strategy(cfg: RunConfig) -> Strategy:
    """Create the Flower strategy that `cfg.strategy` names, sized for `cfg.num_clients`.

    With `cfg.dp` set, the strategy comes wrapped in Flower's DP wrapper of that mode.
    """
    spec = STRATEGIES[cfg.strategy]
    train_nodes = min_train_nodes(cfg)
    evaluate_nodes = max(1, math.floor(cfg.num_clients * cfg.fraction_evaluate))
    if cfg.min_nodes:
        evaluate_nodes = min(evaluate_nodes, cfg.min_nodes)
    strategy = spec.factory(
        fraction_train=cfg.fraction_train,
        fraction_evaluate=cfg.fraction_evaluate,
        min_train_nodes=train_nodes,
        min_evaluate_nodes=evaluate_nodes,
        # By default a round waits until every expected node is connected, so sampling
        # covers the whole federation. With min_nodes it goes on without nodes that left.
        min_available_nodes=min_available_nodes(cfg),
        **spec.options(cfg),
    )
    return wrap_with_privacy(strategy, cfg, num_sampled_nodes=train_nodes)
