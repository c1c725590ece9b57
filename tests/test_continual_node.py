"""A node of a federated continual run: the real ClientApp, called without a network.

The node runs a small random-weight CNN on 28-pixel Fashion-MNIST images, so a round
takes well under a second, but the handlers, the Avalanche strategies and the state files
are those of a simulation.
"""

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedgraft.client import continual_node
from fedgraft.client.app import app
from fedgraft.client.backbone_store import BackboneStore
from fedgraft.client.continual_state import ContinualStateError, ContinualStateStore
from fedgraft.config import RunConfig
from fedgraft.continual.avalanche_adapter import FeatureHead
from fedgraft.continual.federated_config import plan_continual_run
from fedgraft.continual.federated_data import federated_stream
from fedgraft.continual.strategies import create_strategy
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.state import state_dict_sha256, to_array_record, to_state_dict

RUN_KEY = "run-test"
BUFFER_SIZE = 20


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Messages built here act as the server's instructions to node 7.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


@pytest.fixture(autouse=True)
def fresh_process():
    # Each test starts as a newly started node process would.
    continual_node._NODES.clear()
    yield
    continual_node._NODES.clear()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("node-cache")


def continual_cfg(cache_dir, **options) -> RunConfig:
    values = dict(
        backbone="small_cnn", weights="random", image_size=28, num_clients=3, max_samples_per_client=60,
        local_epochs=1, batch_size=16, learning_rate=0.01, seed=5, cache_dir=str(cache_dir),
        stream="split-fmnist", num_tasks=3, rounds_per_task=2, cl_strategy="replay", buffer_size=BUFFER_SIZE,
    )
    values.update(options)
    return RunConfig(**values)


def server_side(cfg: RunConfig):
    model = build_transfer_model(cfg, num_classes=10)
    sha256 = state_dict_sha256(model.backbone.state_dict())
    BackboneStore(cfg.cache_dir).save(model.backbone.state_dict(), sha256)
    return model.trainable_state_dict(), sha256


def instruction(message_type: str, state, sha256: str, server_round: int) -> Message:
    content = RecordDict({
        "arrays": to_array_record(state),
        "config": ConfigRecord({"backbone-sha256": sha256, "server-round": server_round, "continual-run": RUN_KEY}),
    })
    return Message(content=content, dst_node_id=7, message_type=message_type)


def node_context(cfg: RunConfig, state_dir, partition_id: int = 1) -> Context:
    node_config = {"partition-id": partition_id, "num-partitions": cfg.num_clients, "state-dir": str(state_dir)}
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=cfg.to_run_config())


def train_rounds(cfg, context, state, sha256, rounds):
    """Send train instructions for `rounds`, each starting from the previous reply; return the replies."""
    replies = []
    for server_round in rounds:
        reply = app(instruction("train", state, sha256, server_round), context)
        assert not reply.has_error(), reply.error
        replies.append(reply)
        state = to_state_dict(reply.content["arrays"])
    return replies, state


def stored_buffer(state_dir, task: int):
    """Return the replay buffer stored after `task`, an Avalanche dataset."""
    payload = torch.load(state_dir / RUN_KEY / f"task-{task}.pt", weights_only=False)
    (replay,) = [state for key, state in payload["plugins"].items() if key.endswith("ReplayPlugin")]
    return replay["storage_policy"].buffer


def buffer_labels(state_dir, task: int) -> list[int]:
    return [int(label) for label in stored_buffer(state_dir, task).targets]


def task_classes(cfg) -> list[set[int]]:
    return [set(experience.classes) for experience in federated_stream(cfg, plan_continual_run(cfg))]


def test_replay_buffer_keeps_earlier_tasks_within_size(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir)
    state, sha256 = server_side(cfg)
    classes = task_classes(cfg)

    replies, _ = train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, range(1, 7))

    assert [int(r.content["metrics"]["task-index"]) for r in replies] == [0, 0, 1, 1, 2, 2]
    after_task_0 = buffer_labels(tmp_path, 0)
    after_task_2 = buffer_labels(tmp_path, 2)
    assert set(after_task_0) <= classes[0]
    assert set(after_task_2) & classes[0]
    assert set(after_task_2) & classes[1]
    assert set(after_task_2) & classes[2]
    assert len(after_task_2) <= BUFFER_SIZE
    # Two rounds of one task add that task's samples once, so no sample is stored twice.
    inputs = torch.stack([item[0] for item in stored_buffer(tmp_path, 0)])
    assert len(torch.unique(inputs, dim=0)) == len(inputs)
    assert int(replies[-1].content["metrics"]["buffer-samples"]) == len(after_task_2)


def test_restarted_node_keeps_its_buffer(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir)
    state, sha256 = server_side(cfg)
    classes = task_classes(cfg)
    _, state = train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [1, 2])

    continual_node._NODES.clear()  # the node process restarts between tasks
    train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [3])

    assert set(buffer_labels(tmp_path, 1)) & classes[0]


def test_node_without_state_dir_history_starts_afresh(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir)
    state, sha256 = server_side(cfg)
    classes = task_classes(cfg)

    train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [3])

    assert set(buffer_labels(tmp_path, 1)) <= classes[1]


def test_ewc_state_persists_importances(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir, cl_strategy="ewc")
    state, sha256 = server_side(cfg)

    train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [1, 2, 3])

    payload = torch.load(tmp_path / RUN_KEY / "task-1.pt", weights_only=False)
    (ewc,) = [state for key, state in payload["plugins"].items() if key.endswith("EWCPlugin")]
    assert sorted(ewc["importances"]) == [0, 1]
    assert sorted(ewc["saved_params"]) == [0, 1]
    (clock,) = [state for key, state in payload["plugins"].items() if key.endswith("Clock")]
    assert clock["train_exp_counter"] == 2


def test_lagged_node_sits_out_until_it_arrives(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir, task_lags="0,2")
    state, sha256 = server_side(cfg)

    replies, _ = train_rounds(cfg, node_context(cfg, tmp_path, partition_id=1), state, sha256, [1, 2, 3])

    metrics = [reply.content["metrics"] for reply in replies]
    assert [int(m["num-examples"]) for m in metrics[:2]] == [0, 0]
    assert [int(m["task-index"]) for m in metrics] == [-1, -1, 0]
    unchanged = to_state_dict(replies[0].content["arrays"])
    assert all(torch.equal(unchanged[key], state[key]) for key in state)
    assert int(metrics[2]["num-examples"]) > 0


def test_evaluate_reply_reports_each_task(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir)
    state, sha256 = server_side(cfg)

    reply = app(instruction("evaluate", state, sha256, 1), node_context(cfg, tmp_path))

    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    examples = [int(metrics[f"val-examples-task-{task}"]) for task in range(3)]
    assert int(metrics["num-examples"]) == sum(examples)
    assert all(0.0 <= float(metrics[f"val-accuracy-task-{task}"]) <= 1.0 for task in range(3))
    assert list(reply.content.array_records) == []


def test_same_seed_repeats_round_exactly(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir)
    state, sha256 = server_side(cfg)

    _, first = train_rounds(cfg, node_context(cfg, tmp_path / "a"), state, sha256, [1, 2, 3])
    continual_node._NODES.clear()
    _, second = train_rounds(cfg, node_context(cfg, tmp_path / "b"), state, sha256, [1, 2, 3])

    assert all(np.array_equal(first[key].numpy(), second[key].numpy()) for key in first)


def test_state_of_other_strategy_is_rejected(cache_dir, tmp_path):
    cfg = continual_cfg(cache_dir)
    state, sha256 = server_side(cfg)
    train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [1])
    continual_node._NODES.clear()
    ewc_cfg = continual_cfg(cache_dir, cl_strategy="ewc")

    # Called in-process the handler raises. Under a SuperNode, Flower sends the error back as the reply.
    with pytest.raises(ContinualStateError, match="written by strategy 'replay'"):
        app(instruction("train", state, sha256, 3), node_context(ewc_cfg, tmp_path))


def test_corrupt_state_file_names_the_file(tmp_path):
    store = ContinualStateStore(tmp_path, "naive")
    tmp_path.mkdir(exist_ok=True)
    store.file_of(0).write_bytes(b"not a torch file")
    strategy = create_strategy("naive", torch.nn.Linear(4, 2))

    with pytest.raises(ContinualStateError, match="task-0.pt cannot be read"):
        store.restore(before_task=1, strategy=strategy)


def test_feature_head_strategy_restores_nothing_without_files(tmp_path):
    cfg = RunConfig(backbone="small_cnn", weights="random", image_size=28)
    model = build_transfer_model(cfg, num_classes=10)
    strategy = create_strategy("replay", FeatureHead(model))

    assert ContinualStateStore(tmp_path / "empty", "replay").restore(before_task=2, strategy=strategy) is None
