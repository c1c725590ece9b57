"""The server's measurements of a federated continual run, and the files it writes.

After every round the server tests the global model on the test data of every task, the
future ones included, which gives one accuracy curve per task. When a task ends for the
whole federation (`TaskSchedule.task_end_round`), that round's accuracies become row i of
the federation's accuracy matrix R, and `federation-matrix.json` is rewritten. The same
is done per node with the accuracies each node reports on its own validation split of each
task, which gives each node's forgetting without its data leaving the node.

Files, besides the continual module's `matrix.json`, `matrix.csv`, `summary.json` and plots:

- `task-curves.json` and `task-curves.png`: test accuracy on each task after each round;
- `node-forgetting.json`: each node's matrix and forgetting per task (null where the node
  has no validation images of a task);
- `federation-matrix.json`: the rows of R measured so far, rewritten after each task.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord, Message, MetricRecord

from fedgraft.continual.metrics import average_forgetting, forgetting_per_task
from fedgraft.continual.task_heads import evaluate_task
from fedgraft.continual.task_schedule import TaskSchedule
from fedgraft.models.state import to_state_dict
from fedgraft.models.transfer import TransferModel
from fedgraft.server.run_directory import write_json_atomic

__all__ = ["ContinualRecorder", "TaskEvaluator"]

logger = logging.getLogger(__name__)

CURVES_JSON = "task-curves.json"
CURVES_PLOT = "task-curves.png"
NODE_FORGETTING_JSON = "node-forgetting.json"
PARTIAL_MATRIX_JSON = "federation-matrix.json"


class TaskEvaluator:
    """Test global arrays on every task's test features; keep the per-task accuracies.

    With per-task heads, task j's test features go through head j.
    """

    def __init__(
        self,
        model: TransferModel,
        features: list[torch.Tensor],
        labels: list[torch.Tensor],
        schedule: TaskSchedule,
    ) -> None:
        self.model = model
        self.features = features
        self.labels = labels
        self.schedule = schedule
        # Accuracy on each task at the latest call.
        self.latest: list[float] = []

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord:
        """Return the mean test loss and accuracy over the tasks the federation has met so far.

        The signature is Flower's `evaluate_fn`. Round 0 counts task 0 as met.
        """
        self.model.load_trainable_state_dict(to_state_dict(arrays))
        results = [
            evaluate_task(self.model, x, y, task_label=task)
            for task, (x, y) in enumerate(zip(self.features, self.labels))
        ]
        self.latest = [result.accuracy for result in results]
        met = results[: self.schedule.federation_task(max(server_round, 1)) + 1]
        return MetricRecord({
            "test-loss": float(np.mean([result.loss for result in met])),
            "test-accuracy": float(np.mean([result.accuracy for result in met])),
        })


@dataclass
class ContinualRecorder:
    """Per-round task accuracies, the federation's matrix R and one matrix per node."""

    run_dir: Path
    schedule: TaskSchedule
    # Node id to the name it reported, such as "partition 3".
    node_names: dict[int, str]
    baseline: list[float] = field(default_factory=list)
    curves: list[dict] = field(default_factory=list)
    rows: dict[int, list[float]] = field(default_factory=dict)
    # Node name to {task row i: accuracy per task, None where the node has no images}.
    node_rows: dict[str, dict[int, list[float | None]]] = field(default_factory=dict)
    _node_latest: dict[str, list[float | None]] = field(default_factory=dict)

    def state(self) -> dict:
        """Return what a checkpoint needs to continue recording after this round."""
        return {"baseline": self.baseline, "curves": self.curves, "rows": self.rows, "node_rows": self.node_rows}

    def restore(self, state: dict) -> None:
        self.baseline = list(state["baseline"])
        self.curves = list(state["curves"])
        self.rows = dict(state["rows"])
        self.node_rows = {name: dict(rows) for name, rows in state["node_rows"].items()}

    def record_baseline(self, accuracies: list[float]) -> None:
        self.baseline = list(accuracies)
        self.curves.append({"round": 0, "accuracy": list(accuracies)})

    def record_node_replies(self, server_round: int, replies: list[Message]) -> None:
        """Keep each node's per-task validation accuracy from this round's evaluate replies."""
        self._node_latest = {}
        for reply in replies:
            if reply.has_error() or "metrics" not in reply.content.metric_records:
                continue
            metrics = reply.content["metrics"]
            name = self.node_names.get(reply.metadata.src_node_id, f"node {reply.metadata.src_node_id}")
            per_task: list[float | None] = []
            for task in range(self.schedule.num_tasks):
                examples = int(metrics.get(f"val-examples-task-{task}", 0))
                per_task.append(float(metrics[f"val-accuracy-task-{task}"]) if examples else None)
            self._node_latest[name] = per_task

    def record_round(self, server_round: int, accuracies: list[float]) -> int | None:
        """Add one round's task accuracies; return the task whose row this round completes, if any."""
        self.curves.append({"round": server_round, "accuracy": list(accuracies)})
        self._write_curves()
        for task in range(self.schedule.num_tasks):
            if self.schedule.task_end_round(task) == server_round:
                self.rows[task] = list(accuracies)
                for name, per_task in self._node_latest.items():
                    self.node_rows.setdefault(name, {})[task] = per_task
                write_json_atomic(self.run_dir / PARTIAL_MATRIX_JSON, {
                    "description": "rows of the federation's accuracy matrix measured so far; "
                                   "row i is the test accuracy on each task after task i ended",
                    "rows": {str(index): row for index, row in sorted(self.rows.items())},
                    "baseline": self.baseline,
                })
                return task
        return None

    def matrix(self) -> np.ndarray:
        """Return R, shape (T, T); raise RuntimeError when a row was never measured."""
        missing = [task for task in range(self.schedule.num_tasks) if task not in self.rows]
        if missing:
            raise RuntimeError(f"the run ended before tasks {missing} ended; the accuracy matrix is incomplete")
        return np.array([self.rows[task] for task in range(self.schedule.num_tasks)])

    def node_forgetting(self) -> dict[str, dict]:
        """Return each node's matrix and Chaudhry forgetting, over the tasks it has images of."""
        report = {}
        num_tasks = self.schedule.num_tasks
        for name in sorted(self.node_rows):
            rows = self.node_rows[name]
            if len(rows) < num_tasks:
                report[name] = {"matrix": None, "forgetting_per_task": None, "average_forgetting": None,
                                "note": f"replies for {len(rows)} of {num_tasks} task ends"}
                continue
            matrix = [rows[task] for task in range(num_tasks)]
            known = [all(row[task] is not None for row in matrix) for task in range(num_tasks)]
            filled = np.array([[value if value is not None else 0.0 for value in row] for row in matrix])
            per_task = [value if known[task] else None for task, value in enumerate(forgetting_per_task(filled))]
            kept = [value for value in per_task if value is not None]
            report[name] = {
                "matrix": matrix,
                "forgetting_per_task": per_task,
                "average_forgetting": float(np.mean(kept)) if kept else None,
            }
        return report

    def write_node_forgetting(self) -> dict[str, dict]:
        report = self.node_forgetting()
        write_json_atomic(self.run_dir / NODE_FORGETTING_JSON, {
            "description": "matrix[i][j]: accuracy of the global model on the node's validation images "
                           "of task j after task i ended; forgetting per Chaudhry et al. (2018) over "
                           "the tasks the node has validation images of",
            "nodes": report,
        })
        return report

    def federation_forgetting(self) -> float | None:
        return average_forgetting(self.matrix())

    def _write_curves(self) -> None:
        write_json_atomic(self.run_dir / CURVES_JSON, {
            "description": "test accuracy of the global model on each task after each round",
            "task_end_rounds": [self.schedule.task_end_round(task) for task in range(self.schedule.num_tasks)],
            "rounds": self.curves,
        })

    def save_curves_plot(self) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = self.run_dir / CURVES_PLOT
        rounds = [entry["round"] for entry in self.curves]
        figure, axes = plt.subplots(figsize=(8, 4))
        for task in range(self.schedule.num_tasks):
            axes.plot(rounds, [entry["accuracy"][task] for entry in self.curves], marker=".", label=f"task {task}")
        for task in range(self.schedule.num_tasks - 1):
            axes.axvline(self.schedule.task_end_round(task) + 0.5, color="grey", linewidth=0.8, linestyle=":")
        axes.set_xlabel("round")
        axes.set_ylabel("test accuracy")
        axes.set_ylim(-0.02, 1.02)
        axes.set_title("global model: test accuracy on each task (dotted: task boundaries)")
        axes.grid(alpha=0.3)
        axes.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
        figure.tight_layout()
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
        try:
            figure.savefig(tmp, dpi=100)
            os.replace(tmp, path)
        finally:
            plt.close(figure)
            tmp.unlink(missing_ok=True)
        return path
