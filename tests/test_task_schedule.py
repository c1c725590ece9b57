"""The task schedule of a federated continual run: which task a node trains on in which round."""

import pytest

from fedgraft.continual.task_schedule import TaskSchedule, parse_task_lags


def test_synchronous_schedule_moves_every_node_together():
    schedule = TaskSchedule(num_tasks=3, rounds_per_task=2)

    tasks = [schedule.task_of(server_round, lag=0) for server_round in range(1, 7)]

    assert tasks == [0, 0, 1, 1, 2, 2]
    assert schedule.total_rounds == 6
    assert [schedule.task_end_round(task) for task in range(3)] == [2, 4, 6]


def test_lagged_node_arrives_late():
    schedule = TaskSchedule(num_tasks=3, rounds_per_task=2, lags=(0, 2))

    early = [schedule.task_of(server_round, schedule.lag_of(0)) for server_round in range(1, 9)]
    late = [schedule.task_of(server_round, schedule.lag_of(1)) for server_round in range(1, 9)]

    assert schedule.total_rounds == 8
    assert early == [0, 0, 1, 1, 2, 2, 2, 2]
    assert late == [None, None, 0, 0, 1, 1, 2, 2]


def test_task_ends_wait_for_latest_node():
    schedule = TaskSchedule(num_tasks=2, rounds_per_task=3, lags=(0, 1, 4))

    assert [schedule.task_end_round(task) for task in range(2)] == [7, 10]
    assert schedule.lag_of(5) == 4  # partition 5 takes lags[5 % 3]


def test_federation_task_counts_tasks_every_node_started():
    schedule = TaskSchedule(num_tasks=3, rounds_per_task=2, lags=(0, 1))

    assert [schedule.federation_task(server_round) for server_round in range(1, 8)] == [0, 0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("text, expected", [("", (0,)), ("0,1, 2", (0, 1, 2)), ("3", (3,))])
def test_parse_task_lags_accepts_integers(text, expected):
    assert parse_task_lags(text) == expected


@pytest.mark.parametrize("text", ["1,-1", "a", "1.5", "1,,2"])
def test_parse_task_lags_rejects_non_integers(text):
    with pytest.raises(ValueError, match="--task-lags entry"):
        parse_task_lags(text)


def test_schedule_rejects_zero_rounds_per_task():
    with pytest.raises(ValueError, match="rounds_per_task >= 1"):
        TaskSchedule(num_tasks=2, rounds_per_task=0)
