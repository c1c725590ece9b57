"""One classification head per task, for task-incremental streams.

A task-incremental stream gives every experience its index as task label (0..T-1). The
transfer model of such a run gets `TaskHeads`: T heads of the kind `--head` names, each
over the global label map. Head j only predicts the classes of task j, because
`fit_heads_to_stream` masks the logits of every other class. The number of heads is fixed
at T from the start, so every node and the server hold the same array keys
(``head.heads.<j>.<layer>.<param>``), and Flower aggregates them like any other arrays.

`TaskFeatureHead` is the `FeatureHead` of such a model as an Avalanche `MultiTaskModule`.
Avalanche strategies call it through ``avalanche_forward(model, x, task_labels)``, so every
sample of a mini-batch goes through the head of its own task label. That includes replayed
samples of earlier tasks, and `LearningWithoutForgetting` distils every earlier task's head.

Behaviour of avalanche-lib 0.6.0 that this module relies on (models/dynamic_modules.py,
training/regularization.py):

- ``MultiTaskModule.forward(x, None)`` returns ``forward_all_tasks(x)``, a dict with one
  output per label in ``known_train_tasks_labels``. LwF calls it on the teacher and on the
  model in training, then indexes the second dict with the teacher's keys, so the model
  in training must know at least the tasks the teacher knew, or LwF raises KeyError.
- ``known_train_tasks_labels`` grows only in ``adaptation`` while training. It is an
  attribute, not part of the state dict, so a model built anew each round (as a node
  builds its FeatureHead) starts with an empty set. `TaskFeatureHead` therefore takes the
  known tasks as an argument, and a node passes every task up to its current one.
- The base ``MultiTaskModule.forward`` allocates ``(N, max_class_label)`` outputs, and
  ``max_class_label`` is 0 until ``adaptation`` runs. `TaskFeatureHead.forward` does not
  use it: every head has the full label map as output.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from avalanche.models import MultiTaskModule
from torch import Tensor, nn

from fedgraft.client.training import LocalResult, evaluate_features
from fedgraft.config import RunConfig
from fedgraft.continual.avalanche_adapter import FeatureHead
from fedgraft.continual.streams import STREAMS, Experience, task_incremental
from fedgraft.models.transfer import TransferModel

__all__ = [
    "MASKED_LOGIT",
    "HeadLayout",
    "TaskFeatureHead",
    "TaskHeads",
    "evaluate_task",
    "feature_head_for",
    "fit_heads_to_stream",
    "head_layout",
    "num_task_heads",
]

# Logit of a class outside a head's task: the mask value of Avalanche's MultiHeadClassifier.
# Finite, so that its log_softmax is finite too, and a soft target of 0 times it gives 0, not NaN.
MASKED_LOGIT = -1000.0


class HeadLayout(str, Enum):
    """Layout of the transfer model's head."""

    SHARED = "shared"  # one head over the global label map, for every task
    PER_TASK = "per-task"  # one head per task label, each over the global label map


def head_layout(cfg: RunConfig) -> HeadLayout:
    """Return PER_TASK for a run on a task-incremental stream, else SHARED.

    An unknown stream name gets SHARED, so that the check of the stream name, with its
    own message, happens where the run is planned.
    """
    spec = STREAMS.get(cfg.stream) if cfg.stream else None
    # NOTE: StreamSpec has no field for the stream's kind, so the builder is compared.
    if spec is not None and spec.builder is task_incremental:
        return HeadLayout.PER_TASK
    return HeadLayout.SHARED


def num_task_heads(cfg: RunConfig) -> int:
    """Return the number of heads of a PER_TASK run: its number of tasks."""
    return cfg.num_tasks or STREAMS[cfg.stream].default_num_tasks


class TaskHeads(nn.Module):
    """T heads over the global label map; head j gives the logits of task label j's samples."""

    def __init__(self, heads: Sequence[nn.Module], num_classes: int) -> None:
        super().__init__()
        if not heads:
            raise ValueError("TaskHeads needs at least one head, got none")
        self.heads = nn.ModuleList(heads)
        self.num_classes = num_classes
        # class_mask[j, c] is True when head j may predict class c. Not persistent, so the
        # state dict and the arrays sent each round contain the heads' weights only.
        self.register_buffer("class_mask", torch.ones(len(heads), num_classes, dtype=torch.bool), persistent=False)

    @property
    def num_tasks(self) -> int:
        return len(self.heads)

    def set_task_classes(self, classes_per_task: Sequence[Iterable[int]]) -> None:
        """Let head j predict only the classes in ``classes_per_task[j]``.

        Raises ValueError unless there is one class set per head, each non-empty and within
        the label map.
        """
        if len(classes_per_task) != self.num_tasks:
            raise ValueError(
                f"got class sets for {len(classes_per_task)} tasks, but the model has {self.num_tasks} "
                "task heads. Build the model and the stream with the same number of tasks."
            )
        mask = torch.zeros_like(self.class_mask)
        for task, classes in enumerate(classes_per_task):
            classes = sorted(int(label) for label in classes)
            if not classes or classes[0] < 0 or classes[-1] >= self.num_classes:
                raise ValueError(
                    f"task {task} has classes {classes}, expected a non-empty subset of 0..{self.num_classes - 1}"
                )
            mask[task, classes] = True
        self.class_mask.copy_(mask)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        """Return (N, num_classes) logits of head ``task_label`` for (N, in_features) inputs."""
        if not 0 <= task_label < self.num_tasks:
            raise ValueError(
                f"task label {task_label} has no head: the model has heads for task labels "
                f"0 to {self.num_tasks - 1}"
            )
        logits = self.heads[task_label](x)
        return logits.masked_fill(~self.class_mask[task_label], MASKED_LOGIT)

    def forward(self, x: Tensor, task_labels: Tensor | int) -> Tensor:
        """Return (N, num_classes) logits, each row from the head of that sample's task label."""
        if isinstance(task_labels, int):
            return self.forward_single_task(x, task_labels)
        if task_labels.shape != (x.shape[0],):
            raise ValueError(
                f"expected one task label per input, got labels of shape {tuple(task_labels.shape)} "
                f"for {x.shape[0]} inputs"
            )
        out = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype, device=x.device)
        for task in torch.unique(task_labels).tolist():
            rows = task_labels == task
            out[rows] = self.forward_single_task(x[rows], int(task))
        return out


class TaskFeatureHead(FeatureHead, MultiTaskModule):
    """The FeatureHead of a transfer model with `TaskHeads`, routing samples by task label.

    ``known_tasks`` seeds Avalanche's ``known_train_tasks_labels``, the heads that
    ``forward(x, None)`` returns and that LwF distils. Pass the tasks the model has trained
    on, because the set does not survive a rebuild of this wrapper.
    """

    def __init__(self, model: TransferModel, known_tasks: Iterable[int] = ()) -> None:
        if not isinstance(model.head, TaskHeads):
            raise TypeError(
                f"TaskFeatureHead needs a transfer model whose head is TaskHeads, got {type(model.head).__name__}. "
                "Use FeatureHead for a model with one shared head."
            )
        super().__init__(model)
        self.max_class_label = model.head.num_classes
        self.known_train_tasks_labels = {int(task) for task in known_tasks}

    def forward(self, features: Tensor, task_labels: Tensor | int | None) -> Tensor | dict[int, Tensor]:
        """Return (N, num_classes) logits, or with task_labels=None a dict of every known head's logits."""
        if task_labels is None:
            return self.forward_all_tasks(features)
        return self.head(self.head_input(features), task_labels)

    def forward_single_task(self, features: Tensor, task_label: int) -> Tensor:
        return self.head.forward_single_task(self.head_input(features), task_label)


def feature_head_for(model: TransferModel, known_tasks: Iterable[int] = ()) -> FeatureHead:
    """Return the module a strategy trains: TaskFeatureHead for per-task heads, else FeatureHead."""
    if isinstance(model.head, TaskHeads):
        return TaskFeatureHead(model, known_tasks)
    return FeatureHead(model)


def fit_heads_to_stream(model: TransferModel, experiences: Sequence[Experience]) -> None:
    """Restrict head j of a per-task model to experience j's classes; do nothing for a shared head.

    Raises ValueError when the experiences' task labels are not 0..T-1 in order, with T
    the number of heads, because sample routing and evaluation take task label j as head j.
    """
    if not isinstance(model.head, TaskHeads):
        return
    task_labels = [experience.task_label for experience in experiences]
    if task_labels != list(range(model.head.num_tasks)):
        raise ValueError(
            f"the model has {model.head.num_tasks} task heads, so it expects a stream with task "
            f"labels 0 to {model.head.num_tasks - 1} in order, got task labels {task_labels}"
        )
    model.head.set_task_classes([experience.classes for experience in experiences])


@torch.no_grad()
def evaluate_task(
    model: TransferModel,
    features: Tensor,
    labels: Tensor,
    task_label: int,
    batch_size: int = 512,
) -> LocalResult:
    """Return loss and accuracy on frozen-part outputs of one task, through that task's head.

    A model with one shared head ignores ``task_label`` and gives `evaluate_features`'s
    result unchanged.
    """
    if not isinstance(model.head, TaskHeads):
        return evaluate_features(model, features, labels, batch_size=batch_size)
    num_examples = len(labels)
    if num_examples == 0:
        return LocalResult(0.0, 0.0, 0)

    model.eval()
    network = TaskFeatureHead(model)
    loss_sum, correct = 0.0, 0
    for start in range(0, num_examples, batch_size):
        logits = network.forward_single_task(features[start:start + batch_size], task_label)
        target = labels[start:start + batch_size]
        loss_sum += F.cross_entropy(logits, target, reduction="sum").item()
        correct += (logits.argmax(dim=1) == target).sum().item()
    return LocalResult(loss_sum / num_examples, correct / num_examples, num_examples)
