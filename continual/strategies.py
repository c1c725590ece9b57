"""Registry of Avalanche's continual-learning strategies, built by name with `create_strategy`.

Every entry wraps a strategy or plugin of avalanche-lib 0.6.0 unchanged. The settings of
each entry are a dataclass from `fedgraft.continual.strategy_settings`, with documented
defaults. Every strategy trains with cross-entropy and an Adam or SGD optimizer over the
model's trainable parameters.

Entries:

- "naive": fine-tuning on each experience in turn, the lower bound;
- "cumulative": retraining on all experiences so far, the joint upper bound;
- "replay": replay from a class-balanced buffer of ``mem_size`` samples;
- "latent-replay": "replay" for a `FeatureHead` on a `feature_benchmark`. The buffer then
  stores the frozen part's output, not images, and replaying a sample costs no pass
  through the frozen part. A FeatureHead of a full-mode model is rejected, because its
  input is the image;
- "ewc" (separate or online), "lwf", "si": regularisation;
- "gem", "agem": gradient projection against stored samples;
- "gdumb": retraining from the initial model on a class-balanced buffer at each experience.

Example::

    strategy = create_strategy("replay", model, ReplaySettings(mem_size=500))
    matrix = run_stream(strategy, benchmark)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from avalanche.evaluation.metrics import accuracy_metrics
from avalanche.logging import BaseLogger
from avalanche.training import (
    AGEM,
    EWC,
    GEM,
    Cumulative,
    GDumb,
    LwF,
    Naive,
    SynapticIntelligence,
)
from avalanche.training.plugins import EvaluationPlugin, ReplayPlugin
from avalanche.training.storage_policy import ClassBalancedBuffer
from avalanche.training.templates import SupervisedTemplate
from torch import nn

from fedgraft.continual.avalanche_adapter import FeatureHead
from fedgraft.continual.errors import StrategyError
from fedgraft.continual.strategy_settings import (
    AGEMSettings,
    EWCSettings,
    GDumbSettings,
    GEMSettings,
    LwFSettings,
    ReplaySettings,
    SISettings,
    TrainingSettings,
)

__all__ = [
    "STRATEGIES",
    "StrategyError",
    "StrategySpec",
    "available_strategies",
    "create_strategy",
    "default_evaluator",
    "make_optimizer",
]

logger = logging.getLogger(__name__)

# Keyword arguments that every Avalanche strategy constructor takes.
CommonArguments = dict[str, Any]


@dataclass(frozen=True)
class StrategySpec:
    """Registry entry: how to build one strategy by name."""

    # Name used by create_strategy and, later, the command line.
    name: str
    # Dataclass of the strategy's settings. create_strategy rejects any other type.
    settings_type: type[TrainingSettings]
    # One-line summary for listings.
    description: str
    # Builds the strategy from the model, validated settings and the common arguments.
    build: Callable[[nn.Module, Any, CommonArguments], SupervisedTemplate]


class _DebugLogger(BaseLogger):
    """Avalanche logger that writes each metric value to this module's logger at DEBUG level."""

    def log_single_metric(self, name: str, value: Any, x_plot: int) -> None:
        logger.debug("Avalanche metric %s = %s (step %d)", name, value, x_plot)


def default_evaluator() -> EvaluationPlugin:
    """Return an evaluator that records accuracy per experience and per stream, without printing.

    Avalanche's own default evaluator prints every metric to stdout. This one sends them to
    the ``fedgraft.continual.strategies`` logger at DEBUG level. `run_stream` reads its
    per-experience accuracy when asked to cross-check.
    """
    return EvaluationPlugin(
        accuracy_metrics(experience=True, stream=True),
        loggers=[_DebugLogger()],
    )


def make_optimizer(model: nn.Module, settings: TrainingSettings) -> torch.optim.Optimizer:
    """Create the optimizer of ``settings`` over the parameters of ``model`` that require grad.

    Raises StrategyError when the model has no trainable parameter.
    """
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if not trainable:
        raise StrategyError(
            f"model {type(model).__name__} has no parameter with requires_grad=True, so no "
            "strategy can train it. Unfreeze the head, or pass FeatureHead(transfer_model)."
        )
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            trainable,
            lr=settings.learning_rate,
            momentum=settings.momentum,
            weight_decay=settings.weight_decay,
        )
    return torch.optim.Adam(trainable, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def _build_naive(model: nn.Module, settings: TrainingSettings, common: CommonArguments) -> SupervisedTemplate:
    return Naive(model=model, **common)


def _build_cumulative(
    model: nn.Module, settings: TrainingSettings, common: CommonArguments
) -> SupervisedTemplate:
    return Cumulative(model=model, **common)


def _build_replay(model: nn.Module, settings: ReplaySettings, common: CommonArguments) -> SupervisedTemplate:
    # Avalanche's Replay strategy always uses an ExperienceBalancedBuffer, so the
    # class-balanced buffer goes into a ReplayPlugin on the plain training loop instead.
    buffer = ClassBalancedBuffer(
        max_size=settings.mem_size,
        adaptive_size=settings.adaptive_size,
        total_num_classes=settings.total_num_classes,
    )
    plugin = ReplayPlugin(
        mem_size=settings.mem_size,
        batch_size_mem=settings.batch_size_mem,
        task_balanced_dataloader=settings.task_balanced_dataloader,
        storage_policy=buffer,
    )
    return Naive(model=model, plugins=[plugin], **common)


def _build_latent_replay(
    model: nn.Module, settings: ReplaySettings, common: CommonArguments
) -> SupervisedTemplate:
    if not isinstance(model, FeatureHead):
        raise StrategyError(
            f"latent-replay trains a FeatureHead on a feature benchmark, got a "
            f"{type(model).__name__}. Pass FeatureHead(transfer_model) and a benchmark from "
            "feature_benchmark(), or use 'replay' to replay images."
        )
    if model.frozen_block_count == 0:
        raise StrategyError(
            "latent-replay got a FeatureHead of a transfer model in full mode, whose input is "
            "the image itself, so its buffer would store images. Use feature-extraction or "
            "fine-tune mode, or use 'replay'."
        )
    return _build_replay(model, settings, common)


def _build_ewc(model: nn.Module, settings: EWCSettings, common: CommonArguments) -> SupervisedTemplate:
    return EWC(
        model=model,
        ewc_lambda=settings.ewc_lambda,
        mode=settings.mode,
        decay_factor=settings.decay_factor,
        keep_importance_data=settings.keep_importance_data,
        **common,
    )


def _build_lwf(model: nn.Module, settings: LwFSettings, common: CommonArguments) -> SupervisedTemplate:
    # NOTE: for a model that is not an Avalanche MultiTaskModule, avalanche-lib 0.6 distils
    # only the classes of task label 0. On a task-incremental stream with one shared head,
    # LwF therefore protects the first experience's classes only.
    return LwF(model=model, alpha=settings.alpha, temperature=settings.temperature, **common)


def _build_si(model: nn.Module, settings: SISettings, common: CommonArguments) -> SupervisedTemplate:
    return SynapticIntelligence(model=model, si_lambda=settings.si_lambda, eps=settings.eps, **common)


def _build_gem(model: nn.Module, settings: GEMSettings, common: CommonArguments) -> SupervisedTemplate:
    return GEM(
        model=model,
        patterns_per_exp=settings.patterns_per_exp,
        memory_strength=settings.memory_strength,
        **common,
    )


def _build_agem(model: nn.Module, settings: AGEMSettings, common: CommonArguments) -> SupervisedTemplate:
    return AGEM(
        model=model,
        patterns_per_exp=settings.patterns_per_exp,
        sample_size=settings.sample_size,
        **common,
    )


def _build_gdumb(model: nn.Module, settings: GDumbSettings, common: CommonArguments) -> SupervisedTemplate:
    return GDumb(model=model, mem_size=settings.mem_size, **common)


STRATEGIES: dict[str, StrategySpec] = {
    spec.name: spec
    for spec in (
        StrategySpec("naive", TrainingSettings, "fine-tune on each experience in turn", _build_naive),
        StrategySpec(
            "cumulative",
            TrainingSettings,
            "retrain on all experiences so far (joint upper bound)",
            _build_cumulative,
        ),
        StrategySpec("replay", ReplaySettings, "replay from a class-balanced buffer", _build_replay),
        StrategySpec(
            "latent-replay",
            ReplaySettings,
            "replay cached frozen-part features for a FeatureHead, storing no images",
            _build_latent_replay,
        ),
        StrategySpec("ewc", EWCSettings, "elastic weight consolidation, separate or online", _build_ewc),
        StrategySpec("lwf", LwFSettings, "learning without forgetting (distillation)", _build_lwf),
        StrategySpec("si", SISettings, "synaptic intelligence", _build_si),
        StrategySpec("gem", GEMSettings, "gradient episodic memory (needs quadprog)", _build_gem),
        StrategySpec("agem", AGEMSettings, "averaged gradient episodic memory", _build_agem),
        StrategySpec("gdumb", GDumbSettings, "retrain from scratch on a class-balanced buffer", _build_gdumb),
    )
}


def available_strategies() -> list[str]:
    """Return the registered strategy names in registry order."""
    return list(STRATEGIES)


def create_strategy(
    name: str,
    model: nn.Module,
    settings: TrainingSettings | None = None,
    device: str | torch.device = "cpu",
    evaluator: EvaluationPlugin | None = None,
) -> SupervisedTemplate:
    """Build the registered strategy ``name`` to train ``model``.

    ``settings`` must be an instance of the entry's settings type, such as EWCSettings for
    "ewc", and defaults to that type's defaults. ``evaluator`` defaults to
    `default_evaluator()`. Raises StrategyError for an unknown name, settings of the wrong
    type or out of range, a model without trainable parameters, or "latent-replay" with a
    model that is not a FeatureHead of a feature-extraction or fine-tune transfer model.
    """
    spec = STRATEGIES.get(name)
    if spec is None:
        raise StrategyError(f"unknown strategy {name!r}: expected one of {', '.join(STRATEGIES)}")
    if settings is None:
        settings = spec.settings_type()
    if type(settings) is not spec.settings_type:
        raise StrategyError(
            f"strategy {name!r} takes {spec.settings_type.__name__}, got "
            f"{type(settings).__name__}. Pass {spec.settings_type.__name__}(...) or None for "
            "the defaults."
        )
    settings.validate()

    common: CommonArguments = {
        "optimizer": make_optimizer(model, settings),
        "criterion": nn.CrossEntropyLoss(),
        "train_mb_size": settings.batch_size,
        "train_epochs": settings.epochs,
        "eval_mb_size": settings.eval_batch_size,
        "device": device,
        "evaluator": evaluator if evaluator is not None else default_evaluator(),
    }
    strategy = spec.build(model, settings, common)
    logger.debug("Created strategy %s with %s", name, settings)
    return strategy
