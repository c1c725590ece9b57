"""Continual-learning metrics computed from the accuracy matrix of a task stream.

The accuracy matrix R has shape (T, T). R[i, j] is the accuracy on task j's test data after
training on tasks 0..i, as a fraction in [0, 1]. Every entry must be filled, including
R[i, j] for j > i (tasks not trained yet), because forward transfer reads R[j - 1, j].
Indices are 0-based here, and the papers index tasks from 1.

Sources of the formulas:

- Lopez-Paz and Ranzato, 2017, "Gradient Episodic Memory for Continual Learning",
  arXiv:1706.08840: average accuracy (ACC), backward transfer (BWT) and forward
  transfer (FWT).
- Chaudhry, Dokania, Ajanthan and Torr, 2018, "Riemannian Walk for Incremental Learning:
  Understanding Forgetting and Intransigence", arXiv:1801.10112: forgetting.

Example::

    summary = summarize([[0.9, 0.3], [0.6, 0.8]], baseline=[0.1, 0.1])
    summary.backward_transfer  # 0.6 - 0.9 = -0.3
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "ContinualSummary",
    "average_accuracy",
    "average_forgetting",
    "backward_transfer",
    "forgetting_as_avalanche",
    "forgetting_per_task",
    "forward_transfer",
    "summarize",
    "validate_accuracy_matrix",
]


def validate_accuracy_matrix(matrix: ArrayLike) -> np.ndarray:
    """Convert an accuracy matrix to a float64 (T, T) array, T >= 1, with finite values in [0, 1].

    Raises
    ------
    ValueError
        If the matrix is not numeric, is empty, is not square and 2-D, or contains a NaN,
        an infinity or a value outside [0, 1]. The message names the shape or the index of
        the first bad value.
    """
    accuracies = _to_float_array(matrix, "accuracy matrix")
    if accuracies.size == 0:
        raise ValueError(
            f"accuracy matrix is empty (shape {accuracies.shape}), but it needs at least one task"
        )
    if accuracies.ndim != 2 or accuracies.shape[0] != accuracies.shape[1]:
        raise ValueError(
            f"accuracy matrix must be square with shape (T, T), got shape {accuracies.shape}"
        )
    _check_accuracy_values(accuracies, "accuracy matrix")
    return accuracies


def average_accuracy(matrix: ArrayLike) -> float:
    """Compute ACC = (1/T) * sum_j R[T-1, j], the mean final accuracy over all tasks.

    Source: Lopez-Paz and Ranzato, 2017, arXiv:1706.08840.
    """
    accuracies = validate_accuracy_matrix(matrix)
    return float(accuracies[-1].mean())


def backward_transfer(matrix: ArrayLike) -> float | None:
    """Compute BWT = 1/(T-1) * sum_{j < T-1} (R[T-1, j] - R[j, j]).

    BWT is negative when training on later tasks lowered the accuracy on earlier ones.
    Returns None when T == 1, because no task has a later step to compare with.

    Source: Lopez-Paz and Ranzato, 2017, arXiv:1706.08840.
    """
    accuracies = validate_accuracy_matrix(matrix)
    num_tasks = accuracies.shape[0]
    if num_tasks == 1:
        return None

    earlier = np.arange(num_tasks - 1)
    changes = accuracies[-1, earlier] - accuracies[earlier, earlier]
    return float(changes.mean())


def forward_transfer(matrix: ArrayLike, baseline: ArrayLike) -> float | None:
    """Compute FWT = 1/(T-1) * sum_{j >= 1} (R[j-1, j] - b[j]).

    ``baseline`` is b, a length-T vector with the accuracy on each task's test data at
    initialisation, before any training (here the backbone with an untrained head).
    b[0] is required for the shape but unused. FWT is positive when earlier tasks made
    the model better than the baseline on a task it has not trained on yet.
    Returns None when T == 1.

    Source: Lopez-Paz and Ranzato, 2017, arXiv:1706.08840.

    Raises
    ------
    ValueError
        If the matrix is invalid, or the baseline is not a length-T vector of finite
        values in [0, 1].
    """
    accuracies = validate_accuracy_matrix(matrix)
    num_tasks = accuracies.shape[0]
    initial = _validate_baseline(baseline, num_tasks)
    if num_tasks == 1:
        return None

    later = np.arange(1, num_tasks)
    gains = accuracies[later - 1, later] - initial[later]
    return float(gains.mean())


def forgetting_per_task(matrix: ArrayLike) -> list[float | None]:
    """Compute the forgetting f_j of each task at the final step T-1.

    f_j = max_{l in [j, T-2]} R[l, j] - R[T-1, j] for j < T-1, which is the drop from the
    best accuracy task j had before the final step. The last task has None, because the
    final step is the one that trained it.

    The max starts at step j, so an accuracy measured before task j was trained (the
    entries that forward transfer reads) never counts as knowledge to forget.

    Source: Chaudhry et al., 2018, arXiv:1801.10112.
    """
    accuracies = validate_accuracy_matrix(matrix)
    num_tasks = accuracies.shape[0]
    final = accuracies[-1]

    forgetting: list[float | None] = []
    for task in range(num_tasks - 1):
        best_before_final = accuracies[task : num_tasks - 1, task].max()
        forgetting.append(float(best_before_final - final[task]))
    forgetting.append(None)
    return forgetting


def average_forgetting(matrix: ArrayLike) -> float | None:
    """Compute the mean of f_j over tasks j < T-1, or None when T == 1.

    Source: Chaudhry et al., 2018, arXiv:1801.10112. See `forgetting_per_task` for f_j.
    """
    per_task = forgetting_per_task(matrix)
    earlier = [value for value in per_task if value is not None]
    if not earlier:
        return None
    return float(np.mean(earlier))


def forgetting_as_avalanche(matrix: ArrayLike) -> float | None:
    """Compute forgetting as Avalanche's StreamForgetting does, for cross-checking.

    The value is mean_{j < T-1} (R[j, j] - R[T-1, j]), which equals -BWT. Returns None
    when T == 1.

    In avalanche-lib 0.6 (``avalanche.evaluation.metrics.forgetting_bwt``), the reference
    accuracy for experience j is the one measured right after training on j, so it is
    R[j, j]. Chaudhry's f_j uses the maximum over steps j..T-2 instead. The two agree
    unless the accuracy on a task rises after its own training step: for column
    0.5, 0.9, 0.6, Chaudhry gives 0.9 - 0.6 = 0.3 and Avalanche gives 0.5 - 0.6 = -0.1.
    The mapping assumes Avalanche evaluates the whole test stream after every training
    experience.
    """
    transfer = backward_transfer(matrix)
    if transfer is None:
        return None
    return -transfer


@dataclass(frozen=True)
class ContinualSummary:
    """Continual-learning metrics of one accuracy matrix, in accuracy units (fractions)."""

    # ACC, Lopez-Paz and Ranzato, 2017.
    average_accuracy: float
    # BWT, or None for a single task.
    backward_transfer: float | None
    # FWT, or None for a single task or when no baseline was given.
    forward_transfer: float | None
    # Mean Chaudhry forgetting, or None for a single task.
    average_forgetting: float | None
    # Chaudhry forgetting per task, in task order. The last task is always None.
    forgetting_per_task: list[float | None]

    def to_dict(self) -> dict[str, float | None | list[float | None]]:
        """Return the metrics as a JSON-ready dict, with None where a metric is undefined."""
        return {
            "average_accuracy": self.average_accuracy,
            "backward_transfer": self.backward_transfer,
            "forward_transfer": self.forward_transfer,
            "average_forgetting": self.average_forgetting,
            "forgetting_per_task": list(self.forgetting_per_task),
        }


def summarize(matrix: ArrayLike, baseline: ArrayLike | None = None) -> ContinualSummary:
    """Compute every metric of this module for one accuracy matrix.

    ``forward_transfer`` is None when ``baseline`` is None. Raises ValueError on the
    same inputs as the single metrics.
    """
    accuracies = validate_accuracy_matrix(matrix)
    transfer = None if baseline is None else forward_transfer(accuracies, baseline)
    return ContinualSummary(
        average_accuracy=average_accuracy(accuracies),
        backward_transfer=backward_transfer(accuracies),
        forward_transfer=transfer,
        average_forgetting=average_forgetting(accuracies),
        forgetting_per_task=forgetting_per_task(accuracies),
    )


def _validate_baseline(baseline: ArrayLike, num_tasks: int) -> np.ndarray:
    initial = _to_float_array(baseline, "baseline")
    if initial.shape != (num_tasks,):
        raise ValueError(
            f"baseline must be a vector with one accuracy per task, shape ({num_tasks},), "
            f"got shape {initial.shape}"
        )
    _check_accuracy_values(initial, "baseline")
    return initial


def _to_float_array(values: ArrayLike, name: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} is not a numeric array: {error}") from error


def _check_accuracy_values(values: np.ndarray, name: str) -> None:
    non_finite = np.argwhere(~np.isfinite(values))
    if non_finite.size:
        index = _format_index(non_finite[0])
        raise ValueError(
            f"{name} has a non-finite value {values[tuple(non_finite[0])]} at index {index}, "
            "but every accuracy must be a finite number in [0, 1]"
        )

    out_of_range = np.argwhere((values < 0.0) | (values > 1.0))
    if out_of_range.size:
        index = _format_index(out_of_range[0])
        raise ValueError(
            f"{name} has value {values[tuple(out_of_range[0])]} at index {index}, outside [0, 1]. "
            "Pass accuracies as fractions, not percentages."
        )


def _format_index(index: np.ndarray) -> str:
    positions = tuple(int(position) for position in index)
    if len(positions) == 1:
        return str(positions[0])
    return str(positions)
