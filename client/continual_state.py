"""A node's continual-learning state on its own disk: replay buffer, EWC data, LwF teacher.

The state is the `__dict__` of each of the Avalanche strategy's plugins after training,
the Clock included: the ReplayPlugin's buffer, the EWC importances and anchor weights,
the LwF teacher model, and so on. Cumulative keeps every past experience in
`strategy.dataset`, which is stored too. The evaluator is not stored.

One file per task, `task-<k>.pt`, contains the state after the node's latest round of task
k, so the file of the last round of task k is the state after the whole task. A round of
task k starts from the file of the latest earlier task. The strategy therefore
consolidates each task exactly once, however many rounds the task lasts. Files are written
atomically and never leave the node. Avalanche's own `save_checkpoint` pickles the whole
strategy with dill, which fails on avalanche-lib 0.6 with torch 2.14 (a `typing_extensions`
sentinel cannot be pickled), so only the plugins are stored, with torch's pickle.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.agem import AGEMPlugin
from avalanche.training.templates import SupervisedTemplate

__all__ = ["ContinualStateError", "ContinualStateStore"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_TASK_FILE = re.compile(r"^task-(\d+)\.pt$")
# Plugin attributes that hold live iterators, rebuilt after loading.
_TRANSIENT = {AGEMPlugin: ("buffer_dliter",)}


class ContinualStateError(RuntimeError):
    """A state file that cannot be read or does not match the node's strategy."""


def _plugin_key(index: int, plugin: Any) -> str:
    return f"{index}:{type(plugin).__name__}"


def _stored_plugins(strategy: SupervisedTemplate) -> list[tuple[str, Any]]:
    return [
        (_plugin_key(index, plugin), plugin)
        for index, plugin in enumerate(strategy.plugins)
        if not isinstance(plugin, EvaluationPlugin) and type(plugin).__name__ != "PeriodicEval"
    ]


class ContinualStateStore:
    """The folder of one node's state for one run: `task-<k>.pt` files."""

    def __init__(self, path: Path | str, strategy_name: str) -> None:
        self.path = Path(path).expanduser()
        self.strategy_name = strategy_name

    def tasks(self) -> list[int]:
        """Return the tasks that have a state file, ascending."""
        if not self.path.is_dir():
            return []
        found = (_TASK_FILE.match(entry.name) for entry in self.path.iterdir())
        return sorted(int(match.group(1)) for match in found if match)

    def file_of(self, task: int) -> Path:
        return self.path / f"task-{task}.pt"

    def save(self, task: int, strategy: SupervisedTemplate) -> Path:
        """Store the strategy's state after a round of `task`, replacing that task's file."""
        plugins = {}
        for key, plugin in _stored_plugins(strategy):
            skip = _TRANSIENT.get(type(plugin), ())
            plugins[key] = {name: value for name, value in vars(plugin).items() if name not in skip}
        payload = {
            "format": FORMAT_VERSION,
            "strategy": self.strategy_name,
            "task": task,
            "plugins": plugins,
            # Cumulative keeps the concatenation of every experience so far here.
            "dataset": getattr(strategy, "dataset", None) if self.strategy_name == "cumulative" else None,
        }
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.file_of(task)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            torch.save(payload, tmp)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return target

    def restore(self, before_task: int, strategy: SupervisedTemplate) -> int | None:
        """Load the state of the latest task < `before_task` into `strategy`; return that task.

        Returns None, leaving the strategy as built, when no earlier task has a file.
        Raises ContinualStateError when the file is unreadable or belongs to another strategy.
        """
        earlier = [task for task in self.tasks() if task < before_task]
        if not earlier:
            return None
        task = earlier[-1]
        path = self.file_of(task)
        try:
            # The file is the node's own, written by `save`. It contains Avalanche objects,
            # so it needs the full unpickler, not weights_only.
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:  # noqa: BLE001 - any unreadable file gets the same message
            raise ContinualStateError(
                f"continual state file {path} cannot be read ({type(err).__name__}: {err}). "
                "Delete it to restart this node's state from the previous task, or from scratch."
            ) from err
        if payload.get("format") != FORMAT_VERSION or payload.get("strategy") != self.strategy_name:
            raise ContinualStateError(
                f"continual state file {path} was written by strategy {payload.get('strategy')!r} "
                f"(format {payload.get('format')}), but this node runs {self.strategy_name!r}. "
                "Give the node another state-dir, or delete the folder to start afresh."
            )

        stored = payload["plugins"]
        for key, plugin in _stored_plugins(strategy):
            if key not in stored:
                raise ContinualStateError(
                    f"continual state file {path} has no state for plugin {key}; it was written "
                    "by another version of the strategy. Delete the folder to start afresh."
                )
            vars(plugin).update(stored[key])
            if isinstance(plugin, AGEMPlugin) and plugin.buffer_dataloader is not None:
                plugin.buffer_dliter = iter(plugin.buffer_dataloader)
        if payload.get("dataset") is not None:
            strategy.dataset = payload["dataset"]
        logger.debug("restored continual state of task %d from %s", task, path)
        return task
