"""Validation of a RunConfig, run once at the edge before any work starts."""

from __future__ import annotations

from pathlib import Path

from fedgraft.config import ConfigError, RunConfig

__all__ = ["check_run_config", "check_clients_fit_samples"]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require(condition: bool, name: str, value: object, expected: str) -> None:
    if not condition:
        raise ConfigError(f"{_option(name)} is {value!r}, expected {expected}")


def _require_choice(name: str, value: str, choices) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{_option(name)} is {value!r}, expected one of: {', '.join(choices)}")


def check_run_config(cfg: RunConfig) -> None:
    """Raise ConfigError naming the first invalid option, its value and the accepted range."""
    from fedgraft.data.partition import PartitionScheme
    from fedgraft.models.head import HeadKind
    from fedgraft.models.registry import available_backbones
    from fedgraft.models.transfer import TrainingMode
    from fedgraft.strategies.registry import STRATEGIES, min_train_nodes

    # Federation.
    _require(cfg.num_clients >= 1, "num_clients", cfg.num_clients, "an integer >= 1")
    _require(cfg.rounds >= 1, "rounds", cfg.rounds, "an integer >= 1")
    _require(0.0 < cfg.fraction_train <= 1.0, "fraction_train", cfg.fraction_train, "a value in (0, 1]")
    _require(0.0 <= cfg.fraction_evaluate <= 1.0, "fraction_evaluate", cfg.fraction_evaluate, "a value in [0, 1]")
    _require(cfg.round_timeout > 0, "round_timeout", cfg.round_timeout, "a number of seconds > 0")
    _require(0 <= cfg.min_nodes <= cfg.num_clients, "min_nodes", cfg.min_nodes,
             f"an integer from 0 (all nodes) to --num-clients {cfg.num_clients}")

    # Local training.
    _require(cfg.local_epochs >= 1, "local_epochs", cfg.local_epochs, "an integer >= 1")
    _require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "an integer >= 1")
    _require(cfg.learning_rate > 0, "learning_rate", cfg.learning_rate, "a value > 0")
    _require_choice("optimizer", cfg.optimizer, ("adam", "sgd"))
    _require(0.0 <= cfg.momentum < 1.0, "momentum", cfg.momentum, "a value in [0, 1)")
    _require(cfg.weight_decay >= 0, "weight_decay", cfg.weight_decay, "a value >= 0")

    # Strategy.
    _require_choice("strategy", cfg.strategy, STRATEGIES)
    _require(cfg.proximal_mu >= 0, "proximal_mu", cfg.proximal_mu, "a value >= 0")
    _require(cfg.server_learning_rate > 0, "server_learning_rate", cfg.server_learning_rate, "a value > 0")
    _require(0.0 <= cfg.server_momentum < 1.0, "server_momentum", cfg.server_momentum, "a value in [0, 1)")
    _require(0.0 <= cfg.beta_1 < 1.0, "beta_1", cfg.beta_1, "a value in [0, 1)")
    _require(0.0 <= cfg.beta_2 < 1.0, "beta_2", cfg.beta_2, "a value in [0, 1)")
    _require(cfg.tau > 0, "tau", cfg.tau, "a value > 0")
    _require(0.0 <= cfg.trim_beta < 0.5, "trim_beta", cfg.trim_beta, "a value in [0, 0.5)")
    _require(cfg.num_malicious_nodes >= 0, "num_malicious_nodes", cfg.num_malicious_nodes, "an integer >= 0")
    needed = STRATEGIES[cfg.strategy].min_nodes(cfg)
    sampled = min_train_nodes(cfg)
    if sampled < needed:
        raise ConfigError(
            f"--strategy {cfg.strategy} needs at least {needed} nodes per round, but "
            f"--num-clients {cfg.num_clients} with --fraction-train {cfg.fraction_train} samples "
            f"{sampled}; raise --num-clients or --fraction-train, or pick another strategy"
        )
    _check_privacy(cfg, sampled)
    _check_poisoning(cfg)

    # Model.
    _require_choice("backbone", cfg.backbone, available_backbones())
    if cfg.weights not in ("imagenet", "random") and not Path(cfg.weights).expanduser().is_file():
        raise ConfigError(
            f"--weights is {cfg.weights!r}, expected imagenet, random or the path of an existing "
            "weights file"
        )
    _require_choice("mode", cfg.mode, [mode.value for mode in TrainingMode])
    _require(cfg.trainable_blocks >= 1, "trainable_blocks", cfg.trainable_blocks, "an integer >= 1")
    _require_choice("head", cfg.head, [kind.value for kind in HeadKind])
    _require(cfg.head_hidden >= 1, "head_hidden", cfg.head_hidden, "an integer >= 1")
    _require(16 <= cfg.image_size <= 1024, "image_size", cfg.image_size, "a side in pixels from 16 to 1024")

    # Data.
    _require_choice("partition", cfg.partition, [scheme.value for scheme in PartitionScheme])
    _require(cfg.alpha > 0, "alpha", cfg.alpha, "a Dirichlet concentration > 0")
    _require(cfg.classes_per_client >= 1, "classes_per_client", cfg.classes_per_client, "an integer >= 1")
    _require(cfg.max_samples_per_client >= 0, "max_samples_per_client", cfg.max_samples_per_client,
             "an integer >= 0 (0 means no cap)")
    _require(0.0 <= cfg.val_fraction < 1.0, "val_fraction", cfg.val_fraction, "a value in [0, 1)")
    _require(cfg.test_samples >= 0, "test_samples", cfg.test_samples, "an integer >= 0 (0 means all)")

    # Federated continual learning: checked as a whole, because the options depend on each other.
    if cfg.stream:
        from fedgraft.continual.federated_config import plan_continual_run

        plan_continual_run(cfg)


def _check_privacy(cfg: RunConfig, sampled: int) -> None:
    """Raise ConfigError for dp settings that Flower's DP wrappers reject or that void the guarantee."""
    from fedgraft.models.transfer import TrainingMode
    from fedgraft.strategies.privacy import DP_STRATEGIES, DpMode, adaptive_count_stddev

    modes = [mode.value for mode in DpMode if mode is not DpMode.OFF]
    if cfg.dp and cfg.dp not in modes:
        raise ConfigError(f"--dp is {cfg.dp!r}, expected one of: {', '.join(modes)}, or empty to turn dp off")
    if not cfg.dp:
        return
    mode = DpMode(cfg.dp)
    _require(cfg.dp_clipping_norm > 0, "dp_clipping_norm", cfg.dp_clipping_norm, "an L2 norm > 0")
    _require(cfg.dp_noise_multiplier >= 0, "dp_noise_multiplier", cfg.dp_noise_multiplier,
             "a value >= 0 (1.0 or more for meaningful privacy)")
    if cfg.strategy not in DP_STRATEGIES:
        raise ConfigError(
            f"--dp {cfg.dp} cannot be combined with --strategy {cfg.strategy}: the noise is sized for a "
            f"mean of clipped updates, so use --strategy {' or '.join(DP_STRATEGIES)}, or turn dp off"
        )
    if TrainingMode(cfg.mode) is not TrainingMode.FEATURE_EXTRACTION:
        raise ConfigError(
            f"--dp {cfg.dp} cannot be combined with --mode {cfg.mode}: BatchNorm statistics of trainable "
            "blocks are averaged without clipping or noise, so use --mode feature-extraction, or turn dp off"
        )
    if not mode.is_adaptive:
        return

    _require(0.0 <= cfg.dp_target_quantile <= 1.0, "dp_target_quantile", cfg.dp_target_quantile, "a value in [0, 1]")
    _require(cfg.dp_clip_norm_lr > 0, "dp_clip_norm_lr", cfg.dp_clip_norm_lr, "a value > 0")
    _require(cfg.dp_clipped_count_stddev >= 0, "dp_clipped_count_stddev", cfg.dp_clipped_count_stddev,
             "a value >= 0 (0 means nodes per round / 20)")
    # Flower splits the noise budget between the update and the clipped count: the
    # count's noise must exceed half the requested multiplier (Andrew et al., 2019).
    count_stddev = adaptive_count_stddev(cfg, sampled)
    if cfg.dp_noise_multiplier > 0 and cfg.dp_noise_multiplier >= 2 * count_stddev:
        raise ConfigError(
            f"--dp-noise-multiplier {cfg.dp_noise_multiplier} is too large for --dp {cfg.dp} with a "
            f"clipped-count noise of {count_stddev:g} ({sampled} nodes per round); expected a multiplier "
            f"< {2 * count_stddev:g}, so raise --dp-clipped-count-stddev above "
            f"{cfg.dp_noise_multiplier / 2:g} or lower --dp-noise-multiplier"
        )


def _check_poisoning(cfg: RunConfig) -> None:
    """Raise ConfigError unless poisoned-nodes and poison are both empty or both valid."""
    from fedgraft.client.poisoning import Poison, parse_poisoned_nodes

    if not cfg.poisoned_nodes and not cfg.poison:
        return
    if not cfg.poisoned_nodes:
        raise ConfigError(f"--poison is {cfg.poison!r} but --poisoned-nodes is empty; "
                          "name the partition ids that send it, such as --poisoned-nodes 0,3")
    if not cfg.poison:
        raise ConfigError(f"--poisoned-nodes is {cfg.poisoned_nodes!r} but --poison is empty; "
                          "expected scale:FACTOR (such as scale:100), sign-flip or nan")
    try:
        node_ids = parse_poisoned_nodes(cfg.poisoned_nodes)
    except ValueError as err:
        raise ConfigError(f"--poisoned-nodes is {cfg.poisoned_nodes!r}: {err}") from err
    try:
        Poison.parse(cfg.poison)
    except ValueError as err:
        raise ConfigError(f"--poison is invalid: {err}") from err
    outside = sorted(node_id for node_id in node_ids if node_id >= cfg.num_clients)
    if outside:
        raise ConfigError(
            f"--poisoned-nodes names partition {outside[0]}, but --num-clients {cfg.num_clients} "
            f"has partitions 0 to {cfg.num_clients - 1}; name existing partitions"
        )


def check_clients_fit_samples(cfg: RunConfig, num_samples: int) -> None:
    """Raise ConfigError when the training set cannot give every client one sample."""
    if cfg.num_clients > num_samples:
        raise ConfigError(
            f"--num-clients {cfg.num_clients} is more than the {num_samples} training samples; "
            "lower --num-clients"
        )
