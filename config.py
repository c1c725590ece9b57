"""Run configuration: one typed record for the CLI, the ServerApp and the ClientApp.

Every field is one `fedgraft simulate` option and one key of Flower's run config. Field
names use underscores in Python and hyphens on the command line and in the run config
(`local_epochs` is `--local-epochs` and `local-epochs`). The record is validated once, at
the edge, by `RunConfig.validate`, so a bad value stops the run before any work starts.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "RunConfig", "OPTION_GROUPS"]

# Option groups, in the order `fedgraft simulate --help` and the README list them.
OPTION_GROUPS = ("federation", "local training", "strategy", "continual", "model", "data", "output")

STRATEGY_NAMES = (
    "fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "fedavgm", "fedmedian",
    "fedtrimmedavg", "krum",
)


class ConfigError(ValueError):
    """A run setting that is invalid; the message names the option, the value and the fix."""


def _option(default: Any, group: str, help: str) -> Any:
    return field(default=default, metadata={"group": group, "help": help})


@dataclass
class RunConfig:
    """Every setting of a federated transfer-learning run."""

    # Federation.
    num_clients: int = _option(10, "federation", "Number of client nodes in the simulation.")
    rounds: int = _option(20, "federation", "Number of federated rounds.")
    fraction_train: float = _option(1.0, "federation", "Fraction of nodes sampled to train each round.")
    fraction_evaluate: float = _option(
        1.0, "federation", "Fraction of nodes sampled for federated evaluation each round."
    )
    round_timeout: float = _option(
        600.0, "federation", "Seconds the server waits for the replies of one round."
    )
    min_nodes: int = _option(
        0, "federation",
        "Connected nodes a round needs; a round then trains on every connected node and goes on without "
        "nodes that left. 0 means all num-clients.",
    )
    seed: int = _option(
        0, "federation", "Seed for partitioning, node sampling, head initialisation and local shuffling."
    )

    # Local training on each node.
    local_epochs: int = _option(2, "local training", "Passes over the node's training split per round.")
    batch_size: int = _option(32, "local training", "Mini-batch size for local training and evaluation.")
    learning_rate: float = _option(1e-3, "local training", "Learning rate of the client optimizer.")
    optimizer: str = _option("adam", "local training", "Client optimizer: adam or sgd.")
    momentum: float = _option(0.9, "local training", "Momentum of the sgd client optimizer.")
    weight_decay: float = _option(1e-3, "local training", "L2 weight decay of the client optimizer.")
    cache_features: bool = _option(
        True, "local training",
        "Compute the frozen part's output once per node and reuse it; off recomputes it every local epoch.",
    )

    # Server strategy.
    strategy: str = _option("fedavg", "strategy", "Aggregation strategy: " + ", ".join(STRATEGY_NAMES) + ".")
    proximal_mu: float = _option(0.01, "strategy", "FedProx proximal weight mu (fedprox only).")
    server_learning_rate: float = _option(
        0.01, "strategy", "Server learning rate eta (fedadam, fedyogi, fedadagrad; 1.0 for fedavgm is common)."
    )
    server_momentum: float = _option(0.9, "strategy", "Server momentum (fedavgm only).")
    beta_1: float = _option(0.9, "strategy", "First-moment decay (fedadam, fedyogi).")
    beta_2: float = _option(0.99, "strategy", "Second-moment decay (fedadam, fedyogi).")
    tau: float = _option(1e-3, "strategy", "Adaptivity constant tau (fedadam, fedyogi, fedadagrad).")
    trim_beta: float = _option(0.2, "strategy", "Fraction cut from each end (fedtrimmedavg only).")
    num_malicious_nodes: int = _option(0, "strategy", "Number of malicious nodes assumed (krum only).")
    # Differential privacy: one of Flower's DP strategy wrappers around the strategy. Off while `dp` is empty.
    dp: str = _option(
        "", "strategy",
        "Differential privacy: server-fixed, server-adaptive, client-fixed or client-adaptive "
        "clipping with Gaussian noise; empty turns it off. Needs fedavg or fedprox and feature-extraction.",
    )
    dp_clipping_norm: float = _option(
        1.0, "strategy",
        "L2 norm that each node's update is clipped to (dp); the starting norm for the adaptive modes.",
    )
    dp_noise_multiplier: float = _option(
        1.0, "strategy",
        "Gaussian noise standard deviation as a multiple of the clipping norm, before dividing by "
        "the nodes per round (dp); 0 clips without noise and gives no privacy.",
    )
    dp_target_quantile: float = _option(
        0.5, "strategy", "Fraction of updates the adaptive clipping norm aims to clip (adaptive dp only)."
    )
    dp_clip_norm_lr: float = _option(
        0.2, "strategy", "Geometric learning rate of the adaptive clipping norm (adaptive dp only)."
    )
    dp_clipped_count_stddev: float = _option(
        0.0, "strategy",
        "Noise standard deviation on the count of clipped updates (adaptive dp only); "
        "0 means Flower's default of nodes per round / 20.",
    )
    # Simulation only: chosen nodes send a poisoned update, to measure robust strategies.
    poisoned_nodes: str = _option(
        "", "strategy",
        "Comma-separated partition ids of simulated nodes that send poisoned updates; empty means none.",
    )
    poison: str = _option(
        "", "strategy",
        "How the poisoned nodes change their update: scale:FACTOR (such as scale:100), sign-flip or nan.",
    )

    # Federated continual learning: a task stream met by every node. Off while `stream` is empty.
    stream: str = _option(
        "", "continual",
        "Task stream the nodes learn in sequence, such as split-fmnist; empty runs the single-task job.",
    )
    num_tasks: int = _option(0, "continual", "Tasks in the stream; 0 means the stream's default.")
    rounds_per_task: int = _option(
        0, "continual",
        "Rounds each node trains on one task; 0 means rounds // num-tasks. "
        "A continual run lasts num-tasks * rounds-per-task rounds plus the largest task lag.",
    )
    task_lags: str = _option(
        "", "continual",
        "Comma-separated lags in rounds, one per node by partition id and repeated if shorter; "
        "a node with lag L meets each task L rounds later. Empty means all nodes move together.",
    )
    cl_strategy: str = _option(
        "naive", "continual",
        "Continual strategy on every node: naive, cumulative, replay, latent-replay, ewc, lwf, si, gem or agem.",
    )
    buffer_size: int = _option(
        200, "continual", "Replay buffer capacity of each node in samples (replay, latent-replay, gem, agem)."
    )
    ewc_lambda: float = _option(1.0, "continual", "Weight of the EWC penalty (ewc only).")
    lwf_alpha: float = _option(1.0, "continual", "Weight of the LwF distillation loss (lwf only).")
    lwf_temperature: float = _option(2.0, "continual", "Softmax temperature of the LwF distillation (lwf only).")

    # Model: backbone, weights, head and what trains.
    backbone: str = _option("efficientnet_lite0", "model", "Backbone name from the registry.")
    weights: str = _option(
        "imagenet", "model", "Backbone weights: imagenet (packaged or cached), random, or a file path."
    )
    mode: str = _option(
        "feature-extraction", "model", "What trains: feature-extraction, fine-tune or full."
    )
    trainable_blocks: int = _option(1, "model", "Backbone blocks that train in fine-tune mode, counted from the end.")
    head: str = _option("linear", "model", "Head on top of the backbone: linear or mlp.")
    head_hidden: int = _option(256, "model", "Hidden units of the mlp head.")
    image_size: int = _option(
        96, "model", "Side in pixels that images are resized to before the backbone."
    )

    # Data.
    data_dir: str = _option(
        "/usr/share/datasets/fashion-mnist", "data",
        "Folder with the Fashion-MNIST idx files (Debian's dataset-fashion-mnist).",
    )
    partition: str = _option("dirichlet", "data", "How training data is split across clients: iid, dirichlet or shards.")
    alpha: float = _option(0.5, "data", "Dirichlet concentration; smaller means more label skew.")
    classes_per_client: int = _option(2, "data", "Classes per client for the shards partition.")
    max_samples_per_client: int = _option(
        500, "data", "Cap on each client's samples (train and validation together); 0 means no cap."
    )
    val_fraction: float = _option(0.1, "data", "Fraction of each client's samples held out for validation.")
    test_samples: int = _option(
        2000, "data", "Test images the server evaluates on, a seeded stratified subset; 0 means all 10,000."
    )

    # Output.
    output_dir: str = _option("runs", "output", "Folder that receives one directory per run.")
    run_dir: str = _option("", "output", "Exact run directory; empty means OUTPUT_DIR/<timestamp>-<strategy>.")
    cache_dir: str = _option(
        "~/.cache/fedgraft", "output", "Folder for the node backbone store and the feature cache."
    )
    resume: str = _option(
        "", "output",
        "Run directory of an interrupted run to continue from its last checkpoint, with that run's "
        "config.json; other options are ignored.",
    )

    # ----------------------------------------------------------------------------------
    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        """Build a RunConfig from Flower's run config (hyphenated keys); unknown keys are ignored."""
        values = {}
        for f in cls.fields():
            key = f.name.replace("_", "-")
            if key in run_config:
                values[f.name] = _coerce(f, run_config[key])
        return cls(**values)

    @classmethod
    def from_toml(cls, path: Path) -> dict[str, Any]:
        """Read a config file and return its values by field name, checking every key."""
        try:
            with open(path, "rb") as handle:
                raw = tomllib.load(handle)
        except FileNotFoundError as err:
            raise ConfigError(f"config file {path} not found; pass an existing TOML file to --config") from err
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"config file {path} is not valid TOML: {err}") from err
        by_name = {f.name: f for f in cls.fields()}
        values = {}
        for key, value in raw.items():
            name = key.replace("-", "_")
            if name not in by_name:
                raise ConfigError(
                    f"config file {path} has unknown key {key!r}; known keys are the "
                    "`fedgraft simulate` option names, such as 'rounds' or 'local-epochs'"
                )
            values[name] = _coerce(by_name[name], value)
        return values

    def to_run_config(self) -> dict[str, Any]:
        """Return the run config with hyphenated keys, as Flower's `--run-config` takes it."""
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in self.fields()}

    def validate(self) -> RunConfig:
        """Raise ConfigError for the first invalid value; return self when all are valid."""
        from fedgraft.config_checks import check_run_config

        check_run_config(self)
        return self


def _coerce(f: dataclasses.Field, value: Any) -> Any:
    """Convert a run-config value to the field's type, naming the key when it cannot."""
    target = type(f.default)
    if isinstance(value, target) and not (target is int and isinstance(value, bool)):
        return value
    if target is bool and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    try:
        if target is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if target is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if target in (int, float) and isinstance(value, str):
            return target(value)
        if target is str and isinstance(value, (int, float)):
            return str(value)
    except ValueError:
        pass
    raise ConfigError(
        f"{f.name.replace('_', '-')} is {value!r}, expected a {target.__name__}"
    )
