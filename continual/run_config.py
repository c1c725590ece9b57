"""Settings of one continual-learning run: the stream, the strategies, the model and the outputs.

`ContinualConfig` is the continual counterpart of `fedgraft.config.RunConfig`. Every field
is one `fedgraft continual` option, named with hyphens on the command line
(``buffer_size`` is ``--buffer-size``). `ContinualConfig.validate` checks every field once,
before any data is loaded, and raises `fedgraft.config.ConfigError` naming the option,
its value and what is accepted. `settings_for` turns the config into the settings
dataclass that `fedgraft.continual.strategies.create_strategy` takes.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from fedgraft.config import ConfigError
from fedgraft.continual.errors import StrategyError
from fedgraft.continual.streams import SITE_SHIFTS, STREAMS, class_incremental, task_incremental
from fedgraft.continual.strategy_settings import (
    EWC_MODES,
    OPTIMIZERS,
    AGEMSettings,
    EWCSettings,
    GDumbSettings,
    GEMSettings,
    LwFSettings,
    ReplaySettings,
    SISettings,
    TrainingSettings,
)
from fedgraft.data.fashion_mnist import FASHION_MNIST_CLASSES

__all__ = [
    "STRATEGY_NAMES",
    "ConfigError",
    "ContinualConfig",
    "InputKind",
    "input_kind_for",
    "max_tasks",
]

# Names of `fedgraft.continual.strategies.STRATEGIES`, in registry order, for help texts.
# The registry imports Avalanche, which takes seconds, so `fedgraft continual --help`
# reads this copy instead. A test checks that the two lists are equal.
STRATEGY_NAMES = (
    "naive",
    "cumulative",
    "replay",
    "latent-replay",
    "ewc",
    "lwf",
    "si",
    "gem",
    "agem",
    "gdumb",
)

# Strategies that keep --buffer-size // --num-tasks samples per experience.
EPISODIC_STRATEGIES = ("gem", "agem")

# Image side limits of fedgraft.models.preprocess, in pixels.
MIN_IMAGE_SIZE = 16
MAX_IMAGE_SIZE = 1024


class InputKind(str, Enum):
    """Input that the training loop feeds the model."""

    # The frozen backbone's output, computed once per dataset and read from the feature
    # cache. Only the head runs at every training step.
    FEATURES = "features"
    # Preprocessed images. The frozen backbone runs on every mini-batch, replayed ones included.
    IMAGES = "images"


def _option(default: Any, help: str, kind: type = str) -> Any:
    """Declare a field with the help text and the value type of its command-line option."""
    return field(default=default, metadata={"help": help, "kind": kind})


@dataclass
class ContinualConfig:
    """Every setting of a continual-learning run on one stream and one seed."""

    # Stream.
    stream: str = _option(
        "split-fmnist", "Task stream: " + ", ".join(STREAMS) + "."
    )
    num_tasks: int = _option(5, "Number of experiences (tasks) in the stream.", int)
    seed: int = _option(
        0, "Seed of the class order, the subsampling, the head's initial weights and the shuffling.", int
    )

    # Strategies. A tuple, because a comparison runs several on the same stream.
    strategies: tuple[str, ...] = _option(
        ("replay",), "Comma-separated strategies: " + ", ".join(STRATEGY_NAMES) + "."
    )
    buffer_size: int = _option(
        200,
        "Buffer capacity in samples (replay, latent-replay, gdumb). gem and agem keep "
        "buffer-size // num-tasks samples per experience.",
        int,
    )
    ewc_lambda: float = _option(1.0, "Weight of the EWC penalty.", float)
    ewc_mode: str = _option("separate", "EWC mode: separate or online.")
    ewc_decay_factor: float = _option(
        0.9, "Factor in [0, 1] on the old EWC importances in online mode. Separate mode ignores it.", float
    )
    lwf_alpha: float = _option(1.0, "Weight of the LwF distillation loss.", float)
    lwf_temperature: float = _option(2.0, "Softmax temperature of the LwF distillation.", float)

    # Training on each experience.
    epochs: int = _option(5, "Passes over each experience's training data.", int)
    batch_size: int = _option(
        32, "Mini-batch size of new samples (replay adds as many buffer samples).", int
    )
    learning_rate: float = _option(1e-3, "Learning rate of the optimizer.", float)
    optimizer: str = _option("adam", "Optimizer: " + ", ".join(OPTIMIZERS) + ".")

    # Model: a frozen backbone and a linear head over all classes of the label map.
    backbone: str = _option("efficientnet_lite0", "Backbone name from the registry.")
    weights: str = _option("imagenet", "Backbone weights: imagenet, random or a file path.")
    image_size: int = _option(96, "Side in pixels that images are resized to before the backbone.", int)
    input_kind: str = _option(
        InputKind.FEATURES.value,
        "features: train the head on cached backbone features; images: run the frozen "
        "backbone on every mini-batch. latent-replay always uses features.",
    )

    # Data.
    train_samples_per_task: int = _option(
        0, "Cap on each experience's training images, a seeded class-balanced subset. 0 means no cap.", int
    )
    test_samples_per_task: int = _option(
        0, "Cap on each experience's test images, a seeded class-balanced subset. 0 means no cap.", int
    )
    data_dir: str = _option(
        "/usr/share/datasets/fashion-mnist", "Folder with the Fashion-MNIST idx files."
    )

    # Output.
    cache_dir: str = _option("~/.cache/fedgraft", "Folder for the feature cache.")
    output_dir: str = _option("runs", "Folder that receives one directory per run.")
    run_dir: str = _option(
        "",
        "Exact run directory. Empty means OUTPUT_DIR/<timestamp>-<stream>-<strategy>, "
        "or -comparison for several strategies.",
    )

    @classmethod
    def fields(cls) -> list[dataclasses.Field]:
        return list(dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-ready dict, keyed by field name."""
        values = dataclasses.asdict(self)
        values["strategies"] = list(self.strategies)
        return values

    def validate(self) -> ContinualConfig:
        """Raise ConfigError for the first invalid value, or return self when all are valid.

        Nothing is loaded or built, so this is cheap. The data folder is only checked to
        exist, and a weights file only to be a file.
        """
        from fedgraft.models.registry import available_backbones

        # Stream.
        _require_choice("stream", self.stream, STREAMS)
        _require_integer("num_tasks", self.num_tasks, 1)
        limit = max_tasks(self.stream)
        if limit is not None and self.num_tasks > limit:
            raise ConfigError(
                f"--num-tasks is {self.num_tasks}, but {self.stream} has only {limit} "
                f"{'sites' if self.stream == 'shifted-sites-fmnist' else 'classes'} to split "
                f"into tasks. Pass --num-tasks <= {limit}."
            )
        _require_integer("seed", self.seed, 0)

        # Strategies.
        if isinstance(self.strategies, str):
            raise ConfigError(
                f"strategies is the string {self.strategies!r}, expected a tuple of names such "
                "as ('replay',). On the command line, separate the names with commas."
            )
        if len(self.strategies) == 0:
            raise ConfigError(
                f"--strategy is empty, expected one or more of: {', '.join(STRATEGY_NAMES)}"
            )
        for name in self.strategies:
            _require_choice("strategy", name, STRATEGY_NAMES)
        repeated = sorted({name for name in self.strategies if self.strategies.count(name) > 1})
        if repeated:
            raise ConfigError(f"--strategy names {', '.join(repeated)} more than once. List each strategy once.")
        _require_integer("buffer_size", self.buffer_size, 0)
        self._check_buffer_use()
        _require_real("ewc_lambda", self.ewc_lambda, "a number >= 0", lambda value: value >= 0)
        _require_choice("ewc_mode", self.ewc_mode, EWC_MODES)
        _require_real(
            "ewc_decay_factor", self.ewc_decay_factor, "a number in [0, 1]", lambda value: 0 <= value <= 1
        )
        _require_real("lwf_alpha", self.lwf_alpha, "a number >= 0", lambda value: value >= 0)
        _require_real("lwf_temperature", self.lwf_temperature, "a number > 0", lambda value: value > 0)

        # Training.
        _require_integer("epochs", self.epochs, 1)
        _require_integer("batch_size", self.batch_size, 1)
        _require_real("learning_rate", self.learning_rate, "a number > 0", lambda value: value > 0)
        _require_choice("optimizer", self.optimizer, OPTIMIZERS)

        # Model.
        _require_choice("backbone", self.backbone, available_backbones())
        if self.weights not in ("imagenet", "random") and not Path(self.weights).expanduser().is_file():
            raise ConfigError(
                f"--weights is {self.weights!r}, expected imagenet, random or the path of an "
                "existing weights file"
            )
        _require_integer("image_size", self.image_size, MIN_IMAGE_SIZE)
        if self.image_size > MAX_IMAGE_SIZE:
            raise ConfigError(
                f"--image-size is {self.image_size}, expected a side in pixels from "
                f"{MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}"
            )
        _require_choice("input_kind", self.input_kind, [kind.value for kind in InputKind])

        # Data.
        _require_integer("train_samples_per_task", self.train_samples_per_task, 0)
        _require_integer("test_samples_per_task", self.test_samples_per_task, 0)
        if not Path(self.data_dir).expanduser().is_dir():
            raise ConfigError(
                f"--data-dir is {self.data_dir!r}, which is not a folder. Pass the folder with "
                "the Fashion-MNIST idx files, or fill one with `fedgraft download-data --data-dir DIR`."
            )

        # Every strategy's own checks, so that no bad value reaches Avalanche.
        for name in self.strategies:
            try:
                self.settings_for(name).validate()
            except StrategyError as error:
                raise ConfigError(f"--strategy {name}: {error}") from None
        return self

    def _check_buffer_use(self) -> None:
        """Reject a buffer that a chosen strategy cannot work with."""
        if "gdumb" in self.strategies and self.buffer_size < 1:
            raise ConfigError(
                f"--buffer-size is {self.buffer_size}, but gdumb trains only on its buffer, so "
                "it needs --buffer-size >= 1"
            )
        episodic = [name for name in self.strategies if name in EPISODIC_STRATEGIES]
        if episodic and self.buffer_size // self.num_tasks < 1:
            raise ConfigError(
                f"--buffer-size {self.buffer_size} over --num-tasks {self.num_tasks} leaves "
                f"{', '.join(episodic)} no sample per experience. Pass --buffer-size >= {self.num_tasks}."
            )
        if "agem" in self.strategies:
            # A-GEM draws sample_size // (past experiences) buffer samples per past experience.
            sample_size = AGEMSettings().sample_size
            if self.num_tasks - 1 > sample_size:
                raise ConfigError(
                    f"--num-tasks {self.num_tasks} gives agem {self.num_tasks - 1} past "
                    f"experiences, more than its {sample_size} reference samples. Pass "
                    f"--num-tasks <= {sample_size + 1}."
                )

    def settings_for(self, strategy: str) -> TrainingSettings:
        """Return the settings dataclass of ``strategy`` filled from this config.

        Settings that the config has no field for keep the defaults of
        `fedgraft.continual.strategy_settings`. Raises ConfigError for an unknown name.
        """
        _require_choice("strategy", strategy, STRATEGY_NAMES)
        training = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
        }
        per_experience = max(self.buffer_size // self.num_tasks, 1)
        if strategy in ("replay", "latent-replay"):
            return ReplaySettings(**training, mem_size=self.buffer_size)
        if strategy == "gdumb":
            return GDumbSettings(**training, mem_size=self.buffer_size)
        if strategy == "ewc":
            online = self.ewc_mode == "online"
            return EWCSettings(
                **training,
                ewc_lambda=self.ewc_lambda,
                mode=self.ewc_mode,
                decay_factor=self.ewc_decay_factor if online else None,
            )
        if strategy == "lwf":
            return LwFSettings(**training, alpha=self.lwf_alpha, temperature=self.lwf_temperature)
        if strategy == "si":
            return SISettings(**training)
        if strategy == "gem":
            return GEMSettings(**training, patterns_per_exp=per_experience)
        if strategy == "agem":
            return AGEMSettings(**training, patterns_per_exp=per_experience)
        return TrainingSettings(**training)

    def input_kind_of(self, strategy: str) -> InputKind:
        """Return the input kind ``strategy`` trains on under this config."""
        return input_kind_for(strategy, InputKind(self.input_kind))


def input_kind_for(strategy: str, configured: InputKind) -> InputKind:
    """Return the input kind of ``strategy``: FEATURES for latent-replay, else ``configured``."""
    if strategy == "latent-replay":
        return InputKind.FEATURES
    return configured


def max_tasks(stream: str) -> int | None:
    """Return the largest number of tasks ``stream`` can be split into, or None for no limit.

    The class-split streams split the 10 Fashion-MNIST classes, and shifted-sites-fmnist
    has one task per acquisition site. The permuted and rotated streams reuse all classes
    in every task, so any number works.
    """
    builder = STREAMS[stream].builder
    if builder in (class_incremental, task_incremental):
        return len(FASHION_MNIST_CLASSES)
    if stream == "shifted-sites-fmnist":
        return len(SITE_SHIFTS)
    return None


def _option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _require_choice(name: str, value: Any, choices) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{_option_name(name)} is {value!r}, expected one of: {', '.join(choices)}")


def _require_integer(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ConfigError(f"{_option_name(name)} is {value!r}, expected an integer >= {minimum}")


def _require_real(name: str, value: Any, expected: str, accept) -> None:
    valid = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and accept(value)
    )
    if not valid:
        raise ConfigError(f"{_option_name(name)} is {value!r}, expected {expected}")
