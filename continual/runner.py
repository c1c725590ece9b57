"""Train a strategy along a benchmark and measure the accuracy matrix R.

R[i, j] is the accuracy on test experience j after training on experiences 0..i, as a
fraction in [0, 1]. `run_stream` fills every entry, the experiences not trained yet
included, which is what forward transfer needs. The accuracies come from the model's own
predictions, not from Avalanche's printed metrics. `fedgraft.continual.metrics.summarize`
turns R and `untrained_baseline` into ACC, BWT, FWT and forgetting.

Training draws random numbers from torch (shuffling, buffer sampling) and from Python's
``random`` (A-GEM's buffer). For a repeatable run, seed both before building the model,
for example with ``avalanche.training.determinism.rng_manager.RNGManager.set_random_seeds``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import numpy as np
import torch
from avalanche.benchmarks import CLScenario
from avalanche.models.utils import avalanche_forward
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["evaluate_accuracy", "run_stream", "untrained_baseline"]

logger = logging.getLogger(__name__)

# Largest difference allowed between our accuracy and Avalanche's when cross-checking.
# Both count the same correct predictions, so only float rounding separates them.
CROSS_CHECK_TOLERANCE = 1e-6

# Name of Avalanche's per-experience accuracy on the test stream, such as
# "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp002".
_AVALANCHE_ACCURACY = re.compile(r"^Top1_Acc_Exp/eval_phase/test_stream/Task\d+/Exp(\d+)$")


def evaluate_accuracy(
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> float:
    """Return the fraction of items of an Avalanche dataset that ``model`` classifies correctly.

    Items are (input, label, task label) triplets, as `avalanche_adapter.make_dataset`
    builds them. The model receives the task labels only when it is an Avalanche
    MultiTaskModule. The model runs in eval mode without autograd, and its previous
    train or eval mode is restored afterwards.
    """
    if len(dataset) == 0:
        raise ValueError("cannot compute accuracy on an empty dataset: it has no items")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        loader = DataLoader(dataset, batch_size=batch_size, collate_fn=dataset.collate_fn)
        with torch.no_grad():
            for batch in loader:
                inputs, labels, task_labels = batch[0], batch[1], batch[-1]
                logits = avalanche_forward(model, inputs.to(device), task_labels.to(device))
                correct += int((logits.argmax(dim=1).cpu() == labels).sum())
    finally:
        model.train(was_training)
    return correct / len(dataset)


def untrained_baseline(
    model: nn.Module,
    benchmark: CLScenario,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
) -> np.ndarray:
    """Return b, the accuracy of ``model`` on each test experience before any training.

    Call it on the freshly built model, before `run_stream`. Forward transfer compares
    R[j - 1, j] with b[j].
    """
    model.to(device)
    return np.array(
        [
            evaluate_accuracy(model, experience.dataset, device, batch_size)
            for experience in benchmark.test_stream
        ]
    )


def run_stream(
    strategy: SupervisedTemplate,
    benchmark: CLScenario,
    cross_check: bool = False,
    on_step: Callable[[int, np.ndarray], None] | None = None,
) -> np.ndarray:
    """Train ``strategy`` on each training experience in order and return R, shape (T, T).

    After training on experience i, row i gets the accuracy of ``strategy.model`` on every
    test experience. The model is read from the strategy each time, because GDumb replaces
    it with a fresh copy at every experience. ``on_step`` is called with (i, a copy of
    row i) once row i is filled, for progress displays.

    With ``cross_check=True`` the strategy's evaluator also runs on the test stream after
    every experience, and a RuntimeError is raised when its per-experience accuracy differs
    from ours by more than CROSS_CHECK_TOLERANCE. The evaluator must then record
    ``accuracy_metrics(experience=True)``, as `strategies.default_evaluator` does.
    """
    train_stream = benchmark.train_stream
    test_stream = benchmark.test_stream
    if len(train_stream) != len(test_stream):
        raise ValueError(
            f"benchmark has {len(train_stream)} training and {len(test_stream)} test "
            "experiences, expected one test experience per training experience"
        )

    num_tasks = len(train_stream)
    matrix = np.zeros((num_tasks, num_tasks))
    for step, experience in enumerate(train_stream):
        logger.info("Continual training: experience %d of %d", step + 1, num_tasks)
        # eval_streams=[] turns off Avalanche's evaluation during training. The test
        # stream is evaluated below instead.
        strategy.train(experience, eval_streams=[])

        for column, test_experience in enumerate(test_stream):
            matrix[step, column] = evaluate_accuracy(
                strategy.model, test_experience.dataset, strategy.device, strategy.eval_mb_size
            )
        logger.info(
            "Continual training: accuracies after experience %d: %s",
            step + 1,
            np.array2string(matrix[step], precision=3),
        )
        if cross_check:
            _cross_check(strategy, test_stream, matrix[step], step)
        if on_step is not None:
            on_step(step, matrix[step].copy())
    return matrix


def _cross_check(strategy: SupervisedTemplate, test_stream, row: np.ndarray, step: int) -> None:
    """Compare one row of R with the accuracies Avalanche's evaluator records."""
    strategy.evaluator.reset_last_metrics()
    strategy.eval(test_stream)
    recorded: dict[int, float] = {}
    for name, value in strategy.evaluator.get_last_metrics().items():
        match = _AVALANCHE_ACCURACY.match(name)
        if match:
            recorded[int(match.group(1))] = float(value)

    if sorted(recorded) != list(range(len(row))):
        raise RuntimeError(
            f"cross-check after experience {step}: the evaluator recorded test accuracy for "
            f"experiences {sorted(recorded)}, expected 0 to {len(row) - 1}. Give the strategy "
            "an evaluator with accuracy_metrics(experience=True), or run without cross_check."
        )
    for column, ours in enumerate(row):
        if abs(recorded[column] - ours) > CROSS_CHECK_TOLERANCE:
            raise RuntimeError(
                f"cross-check after experience {step}: accuracy on test experience {column} is "
                f"{ours:.6f} from predictions but {recorded[column]:.6f} from Avalanche's metric"
            )
