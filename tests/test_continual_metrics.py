"""Continual-learning metrics from the accuracy matrix, checked against hand computations."""

import json

import numpy as np
import pytest

from fedgraft.continual.metrics import (
    average_accuracy,
    average_forgetting,
    backward_transfer,
    forgetting_as_avalanche,
    forgetting_per_task,
    forward_transfer,
    summarize,
    validate_accuracy_matrix,
)

# Row i: accuracies after training on task i. Column j: task j's test data.
THREE_TASKS = [
    [0.9, 0.3, 0.2],
    [0.6, 0.8, 0.4],
    [0.5, 0.7, 0.9],
]
# FWT never reads b[0], so b[0] differs from the others here to show that.
THREE_TASKS_BASELINE = [0.5, 0.2, 0.1]

# Accuracy on task 0 goes 0.5 -> 0.9 -> 0.6, so it rises after task 0's own step.
RISING_TASK = [
    [0.5, 0.1, 0.1],
    [0.9, 0.8, 0.1],
    [0.6, 0.8, 0.7],
]

# Each column keeps its value from its own step on, so nothing is forgotten.
PERFECT_RETENTION = [
    [0.9, 0.2, 0.1],
    [0.9, 0.7, 0.3],
    [0.9, 0.7, 0.8],
]


def test_average_accuracy_three_tasks():
    # (0.5 + 0.7 + 0.9) / 3 = 0.7
    assert average_accuracy(THREE_TASKS) == pytest.approx(0.7)


def test_backward_transfer_three_tasks():
    # ((0.5 - 0.9) + (0.7 - 0.8)) / 2 = (-0.4 - 0.1) / 2 = -0.25
    assert backward_transfer(THREE_TASKS) == pytest.approx(-0.25)


def test_forward_transfer_three_tasks():
    # ((R[0, 1] - b[1]) + (R[1, 2] - b[2])) / 2 = ((0.3 - 0.2) + (0.4 - 0.1)) / 2 = 0.2
    assert forward_transfer(THREE_TASKS, THREE_TASKS_BASELINE) == pytest.approx(0.2)


def test_forward_transfer_ignores_first_baseline():
    changed_first = [0.0, 0.2, 0.1]

    assert forward_transfer(THREE_TASKS, changed_first) == pytest.approx(0.2)


def test_forgetting_per_task_three_tasks():
    # f_0 = max(0.9, 0.6) - 0.5 = 0.4, f_1 = max(0.8) - 0.7 = 0.1, the last task has None.
    forgetting = forgetting_per_task(THREE_TASKS)

    assert len(forgetting) == 3
    assert forgetting[0] == pytest.approx(0.4)
    assert forgetting[1] == pytest.approx(0.1)
    assert forgetting[2] is None


def test_average_forgetting_three_tasks():
    # (0.4 + 0.1) / 2 = 0.25
    assert average_forgetting(THREE_TASKS) == pytest.approx(0.25)


def test_avalanche_forgetting_three_tasks():
    # ((0.9 - 0.5) + (0.8 - 0.7)) / 2 = 0.25, equal to Chaudhry's here because no column rises.
    assert forgetting_as_avalanche(THREE_TASKS) == pytest.approx(0.25)


def test_chaudhry_forgetting_rising_task():
    # f_0 = max(0.5, 0.9) - 0.6 = 0.3, f_1 = 0.8 - 0.8 = 0, mean (0.3 + 0) / 2 = 0.15.
    forgetting = forgetting_per_task(RISING_TASK)

    assert forgetting[0] == pytest.approx(0.3)
    assert forgetting[1] == pytest.approx(0.0)
    assert average_forgetting(RISING_TASK) == pytest.approx(0.15)


def test_avalanche_forgetting_rising_task():
    # Task 0: 0.5 - 0.6 = -0.1, task 1: 0.8 - 0.8 = 0, mean (-0.1 + 0) / 2 = -0.05.
    assert forgetting_as_avalanche(RISING_TASK) == pytest.approx(-0.05)


def test_single_task_undefined_metrics():
    matrix = [[0.8]]

    assert average_accuracy(matrix) == pytest.approx(0.8)
    assert backward_transfer(matrix) is None
    assert forward_transfer(matrix, [0.1]) is None
    assert forgetting_per_task(matrix) == [None]
    assert average_forgetting(matrix) is None
    assert forgetting_as_avalanche(matrix) is None


def test_single_task_summary_json_null():
    summary = summarize([[0.8]], baseline=[0.1])

    encoded = json.dumps(summary.to_dict())
    decoded = json.loads(encoded)

    assert '"backward_transfer": null' in encoded
    assert decoded["average_accuracy"] == pytest.approx(0.8)
    assert decoded["backward_transfer"] is None
    assert decoded["forward_transfer"] is None
    assert decoded["average_forgetting"] is None
    assert decoded["forgetting_per_task"] == [None]


def test_summary_three_tasks():
    summary = summarize(THREE_TASKS, baseline=THREE_TASKS_BASELINE)

    # Values worked out in the single-metric tests above.
    assert summary.average_accuracy == pytest.approx(0.7)
    assert summary.backward_transfer == pytest.approx(-0.25)
    assert summary.forward_transfer == pytest.approx(0.2)
    assert summary.average_forgetting == pytest.approx(0.25)
    assert summary.forgetting_per_task == [pytest.approx(0.4), pytest.approx(0.1), None]


def test_summary_without_baseline():
    summary = summarize(THREE_TASKS)

    assert summary.forward_transfer is None
    assert summary.backward_transfer == pytest.approx(-0.25)


def test_perfect_retention_no_forgetting():
    # R[T-1, j] == R[j, j] for every column, so every difference is 0.
    assert backward_transfer(PERFECT_RETENTION) == pytest.approx(0.0)
    assert forgetting_per_task(PERFECT_RETENTION) == [
        pytest.approx(0.0),
        pytest.approx(0.0),
        None,
    ]
    assert average_forgetting(PERFECT_RETENTION) == pytest.approx(0.0)
    assert forgetting_as_avalanche(PERFECT_RETENTION) == pytest.approx(0.0)


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_avalanche_forgetting_is_negative_bwt(num_tasks):
    rng = np.random.default_rng(seed=num_tasks)
    matrix = rng.uniform(0.0, 1.0, size=(num_tasks, num_tasks))

    assert forgetting_as_avalanche(matrix) == pytest.approx(-backward_transfer(matrix))


@pytest.mark.parametrize("num_tasks", [2, 3, 5, 8])
def test_chaudhry_forgetting_at_least_avalanche(num_tasks):
    # max over steps j..T-2 includes R[j, j], so each f_j >= R[j, j] - R[T-1, j].
    rng = np.random.default_rng(seed=100 + num_tasks)
    matrix = rng.uniform(0.0, 1.0, size=(num_tasks, num_tasks))

    assert average_forgetting(matrix) >= forgetting_as_avalanche(matrix) - 1e-12


def test_validate_converts_to_float64():
    accuracies = validate_accuracy_matrix([[1, 0], [1, 1]])

    assert accuracies.dtype == np.float64
    assert accuracies.shape == (2, 2)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]], r"square .* got shape \(2, 3\)"),
        ([0.5, 0.6], r"square .* got shape \(2,\)"),
        (np.zeros((2, 2, 2)), r"square .* got shape \(2, 2, 2\)"),
        ([], r"empty"),
        (np.empty((0, 0)), r"empty"),
        ([[0.9, 0.1], [np.nan, 0.8]], r"non-finite value nan at index \(1, 0\)"),
        ([[0.9, np.inf], [0.5, 0.8]], r"non-finite value inf at index \(0, 1\)"),
        ([[0.9, 1.2], [0.5, 0.8]], r"value 1.2 at index \(0, 1\), outside \[0, 1\]"),
        ([[0.9, 0.1], [0.5, -0.1]], r"value -0.1 at index \(1, 1\), outside \[0, 1\]"),
        ([["high", 0.1], [0.5, 0.8]], r"not a numeric array"),
    ],
    ids=["non-square", "1-d", "3-d", "empty-list", "empty-2d", "nan", "inf", "above-one",
         "negative", "non-numeric"],
)
def test_validate_rejects_bad_matrix(matrix, message):
    with pytest.raises(ValueError, match=message):
        validate_accuracy_matrix(matrix)


@pytest.mark.parametrize(
    "metric",
    [
        average_accuracy,
        backward_transfer,
        forgetting_per_task,
        average_forgetting,
        forgetting_as_avalanche,
        summarize,
    ],
)
def test_metric_rejects_percentages(metric):
    with pytest.raises(ValueError, match=r"value 90.0 at index \(0, 0\).*not percentages"):
        metric([[90.0, 10.0], [60.0, 80.0]])


@pytest.mark.parametrize(
    ("baseline", "message"),
    [
        ([0.1, 0.1], r"shape \(3,\), got shape \(2,\)"),
        ([[0.1, 0.1, 0.1]], r"shape \(3,\), got shape \(1, 3\)"),
        ([0.1, np.nan, 0.1], r"baseline has a non-finite value nan at index 1"),
        ([0.1, 0.1, 1.5], r"baseline has value 1.5 at index 2, outside \[0, 1\]"),
    ],
    ids=["short", "2-d", "nan", "above-one"],
)
def test_forward_transfer_rejects_bad_baseline(baseline, message):
    with pytest.raises(ValueError, match=message):
        forward_transfer(THREE_TASKS, baseline)


def test_summary_rejects_bad_baseline():
    with pytest.raises(ValueError, match=r"shape \(3,\), got shape \(2,\)"):
        summarize(THREE_TASKS, baseline=[0.1, 0.1])
