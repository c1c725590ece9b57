"""The server's record of a federated continual run: matrix rows, curves and node forgetting."""

import copy
import json

import pytest
from flwr.app import MetricRecord

from fedgraft.continual.task_schedule import TaskSchedule
from fedgraft.server.continual_record import ContinualRecorder
from flower_messages import evaluate_reply


def node_reply(node_id: int, accuracies: list[float | None]):
    metrics = {}
    for task, accuracy in enumerate(accuracies):
        metrics[f"val-accuracy-task-{task}"] = 0.0 if accuracy is None else accuracy
        metrics[f"val-examples-task-{task}"] = 0 if accuracy is None else 10
    return evaluate_reply(node_id, 10, **metrics)


def recorder_for(tmp_path) -> ContinualRecorder:
    schedule = TaskSchedule(num_tasks=2, rounds_per_task=2)
    return ContinualRecorder(tmp_path, schedule, node_names={1: "partition 0", 2: "partition 1"})


def test_rows_taken_at_task_end_rounds(tmp_path):
    recorder = recorder_for(tmp_path)
    recorder.record_baseline([0.1, 0.1])

    assert recorder.record_round(1, [0.5, 0.0]) is None
    assert recorder.record_round(2, [0.9, 0.0]) == 0
    assert recorder.record_round(3, [0.6, 0.7]) is None
    assert recorder.record_round(4, [0.4, 0.8]) == 1

    assert recorder.matrix().tolist() == [[0.9, 0.0], [0.4, 0.8]]
    partial = json.loads((tmp_path / "federation-matrix.json").read_text())
    assert partial["rows"] == {"0": [0.9, 0.0], "1": [0.4, 0.8]}
    assert recorder.federation_forgetting() == pytest.approx(0.5)


def test_incomplete_matrix_raises(tmp_path):
    recorder = recorder_for(tmp_path)
    recorder.record_round(2, [0.9, 0.0])

    with pytest.raises(RuntimeError, match="before tasks \\[1\\] ended"):
        recorder.matrix()


def test_node_forgetting_skips_tasks_without_images(tmp_path):
    recorder = recorder_for(tmp_path)
    recorder.record_node_replies(2, [node_reply(1, [0.8, 0.1]), node_reply(2, [None, 0.2])])
    recorder.record_round(2, [0.9, 0.0])
    recorder.record_node_replies(4, [node_reply(1, [0.3, 0.9]), node_reply(2, [None, 0.7])])
    recorder.record_round(4, [0.4, 0.8])

    report = recorder.write_node_forgetting()

    assert report["partition 0"]["forgetting_per_task"] == [pytest.approx(0.5), None]
    assert report["partition 0"]["average_forgetting"] == pytest.approx(0.5)
    assert report["partition 1"]["forgetting_per_task"] == [None, None]
    assert report["partition 1"]["average_forgetting"] is None
    assert (tmp_path / "node-forgetting.json").is_file()


def test_state_round_trip_continues_recording(tmp_path):
    recorder = recorder_for(tmp_path)
    recorder.record_baseline([0.1, 0.1])
    recorder.record_node_replies(2, [node_reply(1, [0.8, 0.1])])
    recorder.record_round(2, [0.9, 0.0])

    resumed = recorder_for(tmp_path)
    resumed.restore(copy.deepcopy(recorder.state()))  # as a checkpoint stores and loads it
    resumed.record_node_replies(4, [node_reply(1, [0.3, 0.9])])
    resumed.record_round(4, [0.4, 0.8])

    assert resumed.matrix().tolist() == [[0.9, 0.0], [0.4, 0.8]]
    assert [entry["round"] for entry in resumed.curves] == [0, 2, 4]
    assert resumed.node_forgetting()["partition 0"]["average_forgetting"] == pytest.approx(0.5)


def test_reply_without_task_metrics_counts_as_no_images(tmp_path):
    recorder = recorder_for(tmp_path)
    reply = node_reply(1, [0.5, 0.5])
    reply.content["metrics"] = MetricRecord({"num-examples": 0})

    recorder.record_node_replies(2, [reply])
    recorder.record_round(2, [0.9, 0.0])

    assert recorder.node_rows == {"partition 0": {0: [None, None]}}
