"""Settings of the continual-learning strategies, one frozen dataclass per strategy.

Every strategy shares `TrainingSettings`, and a strategy with hyperparameters of its own
extends it by one level. Each field's comment states where its default comes from: the
default of avalanche-lib 0.6.0, a value of ContinualAI's continual-learning-baselines
repository (github.com/ContinualAI/continual-learning-baselines, which runs Avalanche's
strategies on standard benchmarks), or fedgraft's own choice with its reason.

`create_strategy` calls ``validate()`` once before it builds anything, so a bad value
raises StrategyError naming the field, and never reaches one of Avalanche's asserts.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from fedgraft.continual.errors import StrategyError

__all__ = [
    "AGEMSettings",
    "EWCSettings",
    "GDumbSettings",
    "GEMSettings",
    "LwFSettings",
    "OPTIMIZERS",
    "ReplaySettings",
    "SISettings",
    "TrainingSettings",
]

# Optimizer names accepted by TrainingSettings.optimizer.
OPTIMIZERS = ("adam", "sgd")

# EWC modes of avalanche-lib 0.6's EWCPlugin.
EWC_MODES = ("separate", "online")


@dataclass(frozen=True)
class TrainingSettings:
    """Training loop and optimizer settings shared by every strategy."""

    # Passes over each experience's training data. Avalanche's default is 1. fedgraft
    # uses 5, its own untuned choice, so that a new head trains on each sample more than once.
    epochs: int = 5
    # Training mini-batch size (Avalanche's train_mb_size). Avalanche's default is 1.
    # fedgraft uses 32, its RunConfig default batch size.
    batch_size: int = 32
    # Evaluation mini-batch size (eval_mb_size). It changes speed only, not results.
    # fedgraft's choice. Avalanche's default is train_mb_size, and 1 for SynapticIntelligence.
    eval_batch_size: int = 256
    # "adam" or "sgd", from fedgraft's RunConfig default.
    optimizer: str = "adam"
    # Step size, from fedgraft's RunConfig default.
    learning_rate: float = 1e-3
    # Momentum of "sgd". "adam" ignores it. From fedgraft's RunConfig default.
    momentum: float = 0.9
    # L2 weight decay. 0, PyTorch's default, so no strategy gets a penalty it did not ask for.
    weight_decay: float = 0.0

    def validate(self) -> None:
        """Raise StrategyError naming the first field outside its valid range."""
        _check_integer(self, "epochs", minimum=1)
        _check_integer(self, "batch_size", minimum=1)
        _check_integer(self, "eval_batch_size", minimum=1)
        if self.optimizer not in OPTIMIZERS:
            raise StrategyError(
                f"optimizer is {self.optimizer!r}, expected one of {', '.join(OPTIMIZERS)}"
            )
        _check_real(self, "learning_rate", minimum=0.0, inclusive=False)
        _check_real(self, "momentum", minimum=0.0)
        _check_real(self, "weight_decay", minimum=0.0)


@dataclass(frozen=True)
class ReplaySettings(TrainingSettings):
    """Experience replay from a class-balanced buffer (Avalanche's ReplayPlugin, ClassBalancedBuffer)."""

    # Buffer capacity in samples, over all classes. Avalanche's default (Replay, ReplayPlugin).
    # 0 keeps no samples, which trains like naive.
    mem_size: int = 200
    # Buffer samples per mini-batch, on top of batch_size new samples. None uses
    # batch_size, as Avalanche's default does.
    batch_size_mem: int | None = None
    # Draw buffer samples balanced over task labels. Avalanche's default is False.
    task_balanced_dataloader: bool = False
    # Divide mem_size equally over the classes seen so far. With False it is divided
    # over total_num_classes from the start. Avalanche's default is True.
    adaptive_size: bool = True
    # Number of classes to divide mem_size over when adaptive_size is False.
    # Avalanche's default is None.
    total_num_classes: int | None = None

    def validate(self) -> None:
        super().validate()
        _check_integer(self, "mem_size", minimum=0)
        if self.batch_size_mem is not None:
            _check_integer(self, "batch_size_mem", minimum=1)
        if not self.adaptive_size:
            if self.total_num_classes is None:
                raise StrategyError(
                    "total_num_classes is None, but adaptive_size=False divides mem_size over "
                    "a fixed number of classes. Set total_num_classes, or adaptive_size=True."
                )
            _check_integer(self, "total_num_classes", minimum=1)


@dataclass(frozen=True)
class EWCSettings(TrainingSettings):
    """Elastic Weight Consolidation, Avalanche's EWC strategy."""

    # Weight of the penalty. Avalanche has no default. 1 is the value of
    # continual-learning-baselines' experiments/permuted_mnist/ewc.py (separate mode).
    ewc_lambda: float = 1.0
    # "separate" keeps one penalty per past experience. "online" keeps one running
    # penalty whose old importances decay by decay_factor. Avalanche's default is "separate".
    mode: str = "separate"
    # Factor on the old importances in online mode, in [0, 1]. Required by "online" and
    # rejected by "separate". Avalanche's default is None.
    decay_factor: float | None = None
    # Keep the parameters and importances of every past experience in online mode too.
    # Separate mode always keeps them. Avalanche's default is False.
    keep_importance_data: bool = False

    def validate(self) -> None:
        super().validate()
        _check_real(self, "ewc_lambda", minimum=0.0)
        if self.mode not in EWC_MODES:
            raise StrategyError(f"EWC mode is {self.mode!r}, expected one of {', '.join(EWC_MODES)}")
        if self.mode == "online":
            if self.decay_factor is None:
                raise StrategyError(
                    "EWC mode 'online' needs decay_factor, the factor in [0, 1] on the old "
                    "importances. Set decay_factor, or use mode='separate'."
                )
            _check_real(self, "decay_factor", minimum=0.0, maximum=1.0)
        elif self.decay_factor is not None:
            raise StrategyError(
                f"decay_factor={self.decay_factor} applies to EWC mode 'online' only, but mode "
                "is 'separate'. Set mode='online', or leave decay_factor as None."
            )


@dataclass(frozen=True)
class LwFSettings(TrainingSettings):
    """Learning without Forgetting, Avalanche's LwF strategy."""

    # Weight of the distillation loss. Avalanche's LwFPlugin default.
    alpha: float = 1.0
    # Softmax temperature of the distillation. Avalanche's LwFPlugin default.
    temperature: float = 2.0

    def validate(self) -> None:
        super().validate()
        _check_real(self, "alpha", minimum=0.0)
        _check_real(self, "temperature", minimum=0.0, inclusive=False)


@dataclass(frozen=True)
class SISettings(TrainingSettings):
    """Synaptic Intelligence, Avalanche's SynapticIntelligence strategy."""

    # Weight of the surrogate loss. Avalanche has no default. 0.1 is the value of
    # continual-learning-baselines' experiments/permuted_mnist/synaptic_intelligence.py.
    si_lambda: float = 0.1
    # Damping term of the importance. Avalanche's default is 1e-7. 0.1 is the value of
    # the same baselines file, used together with si_lambda = 0.1.
    eps: float = 0.1

    def validate(self) -> None:
        super().validate()
        _check_real(self, "si_lambda", minimum=0.0)
        _check_real(self, "eps", minimum=0.0, inclusive=False)


@dataclass(frozen=True)
class GEMSettings(TrainingSettings):
    """Gradient Episodic Memory, Avalanche's GEM strategy."""

    # Samples stored per experience. Avalanche has no default. 1000 is the value of
    # continual-learning-baselines' experiments/permuted_mnist/gem.py. GEM runs a forward
    # and backward pass over each past experience's samples at every training step.
    patterns_per_exp: int = 1000
    # Offset gamma added to the projection, favouring backward transfer. Avalanche's
    # default, also used by the same baselines file.
    memory_strength: float = 0.5

    def validate(self) -> None:
        super().validate()
        _check_integer(self, "patterns_per_exp", minimum=1)
        _check_real(self, "memory_strength", minimum=0.0)


@dataclass(frozen=True)
class AGEMSettings(TrainingSettings):
    """Averaged Gradient Episodic Memory (A-GEM), Avalanche's AGEM strategy."""

    # Samples stored per experience. Avalanche has no default. 250 is the value of
    # continual-learning-baselines' experiments/permuted_mnist/agem.py.
    patterns_per_exp: int = 250
    # Buffer samples per reference gradient, split equally over past experiences.
    # Avalanche's default is 64. 256 is the value of the same baselines file.
    sample_size: int = 256

    def validate(self) -> None:
        super().validate()
        _check_integer(self, "patterns_per_exp", minimum=1)
        # NOTE: Avalanche 0.6 draws sample_size // (number of past experiences) samples per
        # experience, so a stream with more past experiences than sample_size fails there.
        _check_integer(self, "sample_size", minimum=1)


@dataclass(frozen=True)
class GDumbSettings(TrainingSettings):
    """GDumb, Avalanche's strategy that retrains from scratch on a class-balanced buffer."""

    # Buffer capacity in samples. Avalanche's default.
    mem_size: int = 200

    def validate(self) -> None:
        super().validate()
        # GDumb trains on the buffer only, so an empty buffer would leave nothing to train on.
        _check_integer(self, "mem_size", minimum=1)


def _check_integer(settings: TrainingSettings, field: str, minimum: int) -> None:
    value = getattr(settings, field)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise StrategyError(
            f"{type(settings).__name__}.{field} must be an integer >= {minimum}, got {value!r}"
        )


def _check_real(
    settings: TrainingSettings,
    field: str,
    minimum: float,
    maximum: float | None = None,
    inclusive: bool = True,
) -> None:
    value = getattr(settings, field)
    valid = (
        not isinstance(value, bool)
        and isinstance(value, numbers.Real)
        and math.isfinite(value)
        and (value >= minimum if inclusive else value > minimum)
        and (maximum is None or value <= maximum)
    )
    if not valid:
        low = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        bound = low if maximum is None else f"{low} and <= {maximum:g}"
        raise StrategyError(
            f"{type(settings).__name__}.{field} must be a finite number {bound}, got {value!r}"
        )
