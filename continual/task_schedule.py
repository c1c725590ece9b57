"""The task schedule of a federated continual run: the task each node trains on in each round.

Every node meets the same task sequence, each task for `rounds_per_task` rounds. A node
with lag L arrives L rounds late: it sits out rounds 1..L, then trains on task k in rounds
L + k * rounds_per_task + 1 .. L + (k + 1) * rounds_per_task. The run lasts until the
latest node has finished its last task. A node that finishes earlier keeps training on its
last task, so that it still contributes to the rounds the others need.

With all lags 0 (the default) every node moves through the tasks together.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TaskSchedule", "parse_task_lags"]


def parse_task_lags(text: str) -> tuple[int, ...]:
    """Parse "0,2,4" into (0, 2, 4); an empty string means no lag for any node.

    Raises ValueError naming the entry that is not an integer >= 0.
    """
    if not text.strip():
        return (0,)
    lags = []
    for entry in text.split(","):
        entry = entry.strip()
        if not entry.isdigit():
            raise ValueError(
                f"--task-lags entry {entry!r} is not an integer >= 0. Pass lags in rounds "
                "separated by commas, such as 0,1,2"
            )
        lags.append(int(entry))
    return tuple(lags)


@dataclass(frozen=True)
class TaskSchedule:
    """The task sequence in rounds: tasks, rounds per task and each node's lag."""

    num_tasks: int
    rounds_per_task: int
    # Lag in rounds of the node with partition id p is lags[p % len(lags)].
    lags: tuple[int, ...] = (0,)

    def __post_init__(self) -> None:
        if self.num_tasks < 1 or self.rounds_per_task < 1:
            raise ValueError(
                f"a task schedule needs num_tasks >= 1 and rounds_per_task >= 1, got "
                f"{self.num_tasks} and {self.rounds_per_task}"
            )
        if not self.lags or min(self.lags) < 0:
            raise ValueError(f"task lags must be one or more integers >= 0, got {self.lags}")

    @property
    def max_lag(self) -> int:
        return max(self.lags)

    @property
    def total_rounds(self) -> int:
        """Rounds until the latest node has trained on its last task."""
        return self.num_tasks * self.rounds_per_task + self.max_lag

    def lag_of(self, partition_id: int) -> int:
        return self.lags[partition_id % len(self.lags)]

    def task_of(self, server_round: int, lag: int) -> int | None:
        """Return the task a node with `lag` trains on in `server_round`, or None before it arrives."""
        if server_round <= lag:
            return None
        return min((server_round - 1 - lag) // self.rounds_per_task, self.num_tasks - 1)

    def task_end_round(self, task: int) -> int:
        """Return the round after which every node has trained on `task` for its full span."""
        return (task + 1) * self.rounds_per_task + self.max_lag

    def federation_task(self, server_round: int) -> int:
        """Return the latest task that every node has started by `server_round` (0 before that)."""
        started = (server_round - 1 - self.max_lag) // self.rounds_per_task
        return max(0, min(started, self.num_tasks - 1))
