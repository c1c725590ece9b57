"""Per-task heads on a task-incremental stream: keys, routing, replay, LwF and restarts.

The nodes are the real ClientApp with a small random-weight CNN on 28-pixel Fashion-MNIST
images, as in test_continual_node.py, on the `split-fmnist-task` stream (task label =
experience index, 2 classes per task with 5 tasks, 3 or 4 classes with 3 tasks).
"""

import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedgraft.client import continual_node
from fedgraft.client.app import app
from fedgraft.client.backbone_store import BackboneStore
from fedgraft.config import RunConfig
from fedgraft.continual.avalanche_adapter import FeatureHead
from fedgraft.continual.federated_config import plan_continual_run
from fedgraft.continual.federated_data import federated_stream
from fedgraft.continual.strategies import create_strategy
from fedgraft.continual.task_heads import (
    MASKED_LOGIT,
    HeadLayout,
    TaskFeatureHead,
    TaskHeads,
    evaluate_task,
    feature_head_for,
    fit_heads_to_stream,
    head_layout,
)
from fedgraft.continual.task_schedule import TaskSchedule
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.state import state_dict_sha256, to_array_record, to_state_dict
from fedgraft.server.continual_record import TaskEvaluator

RUN_KEY = "run-task-heads"
NUM_TASKS = 3


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
    return tmp_path_factory.mktemp("task-heads-cache")


def task_cfg(cache_dir, **options) -> RunConfig:
    values = dict(
        backbone="small_cnn", weights="random", image_size=28, num_clients=3, max_samples_per_client=60,
        local_epochs=1, batch_size=16, learning_rate=0.01, seed=5, cache_dir=str(cache_dir),
        stream="split-fmnist-task", num_tasks=NUM_TASKS, rounds_per_task=2, cl_strategy="replay",
        buffer_size=20,
    )
    values.update(options)
    return RunConfig(**values)


def server_model(cfg: RunConfig):
    """Build the server's model as the ServerApp does; store its backbone for the nodes."""
    model = build_transfer_model(cfg, num_classes=10)
    sha256 = state_dict_sha256(model.backbone.state_dict())
    BackboneStore(cfg.cache_dir).save(model.backbone.state_dict(), sha256)
    return model, sha256


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
    """Send train instructions for `rounds`, each from the previous reply's arrays; return the last arrays."""
    for server_round in rounds:
        reply = app(instruction("train", state, sha256, server_round), context)
        assert not reply.has_error(), reply.error
        state = to_state_dict(reply.content["arrays"])
    return state


def the_node() -> continual_node.ContinualNode:
    (node,) = continual_node._NODES.values()
    return node


def record_head_calls(monkeypatch) -> list[tuple[int, torch.Tensor]]:
    """Record (task label, input rows) of every call of a task head, in call order."""
    calls = []
    original = TaskHeads.forward_single_task

    def recording(self, x, task_label):
        calls.append((task_label, x.detach().clone()))
        return original(self, x, task_label)

    monkeypatch.setattr(TaskHeads, "forward_single_task", recording)
    return calls


def rows_within(rows: torch.Tensor, reference: torch.Tensor) -> bool:
    """Return whether every row of `rows` is a row of `reference`."""
    matches = (rows[:, None, :] == reference[None, :, :]).all(dim=2)
    return bool(matches.any(dim=1).all())


def perturbed(state: dict, head: int) -> dict:
    """Return a copy of `state` with head `head`'s weights replaced by seeded noise."""
    generator = torch.Generator().manual_seed(head)
    changed = dict(state)
    for key, value in state.items():
        if key.startswith(f"head.heads.{head}."):
            changed[key] = torch.randn(value.shape, generator=generator)
    return changed


def test_layout_follows_stream(cache_dir):
    assert head_layout(task_cfg(cache_dir)) is HeadLayout.PER_TASK
    assert head_layout(task_cfg(cache_dir, stream="split-fmnist")) is HeadLayout.SHARED
    assert head_layout(task_cfg(cache_dir, stream="permuted-fmnist")) is HeadLayout.SHARED
    assert head_layout(task_cfg(cache_dir, stream="")) is HeadLayout.SHARED
    assert head_layout(task_cfg(cache_dir, stream="no-such-stream")) is HeadLayout.SHARED


def test_shared_head_model_unchanged(cache_dir):
    single_task = build_transfer_model(RunConfig(backbone="small_cnn", weights="random", seed=5), num_classes=10)
    class_incremental = build_transfer_model(task_cfg(cache_dir, stream="split-fmnist"), num_classes=10)

    assert not isinstance(class_incremental.head, TaskHeads)
    expected = single_task.trainable_state_dict()
    actual = class_incremental.trainable_state_dict()
    assert sorted(actual) == sorted(expected) == ["head.fc.bias", "head.fc.weight"]
    assert all(torch.equal(actual[key], expected[key]) for key in expected)


def test_keys_match_on_nodes_and_server(cache_dir, tmp_path):
    cfg = task_cfg(cache_dir)
    model, sha256 = server_model(cfg)
    server_state = model.trainable_state_dict()

    assert sorted(server_state) == sorted(
        f"head.heads.{task}.fc.{name}" for task in range(NUM_TASKS) for name in ("weight", "bias")
    )
    for partition_id in range(cfg.num_clients):
        continual_node._NODES.clear()
        context = node_context(cfg, tmp_path / f"p{partition_id}", partition_id)
        reply_state = train_rounds(cfg, context, server_state, sha256, [1])
        assert list(reply_state) == list(server_state)
        assert all(reply_state[key].shape == server_state[key].shape for key in server_state)


def test_sample_goes_through_its_task_head(cache_dir):
    cfg = task_cfg(cache_dir)
    model, _ = server_model(cfg)
    network = TaskFeatureHead(model)
    features = torch.randn(6, model.backbone.num_features, generator=torch.Generator().manual_seed(0))
    task_labels = torch.tensor([0, 1, 2, 1, 0, 2])
    before = network(features, task_labels).detach()

    model.load_trainable_state_dict(perturbed(model.trainable_state_dict(), head=1))
    after = network(features, task_labels).detach()

    other_tasks = task_labels != 1
    assert torch.equal(after[other_tasks], before[other_tasks])
    assert not torch.allclose(after[~other_tasks], before[~other_tasks])
    for task in range(NUM_TASKS):
        rows = task_labels == task
        assert torch.equal(after[rows], network(features[rows], task).detach())


def test_head_predicts_only_its_task_classes(cache_dir):
    cfg = task_cfg(cache_dir)
    model, _ = server_model(cfg)
    experiences = federated_stream(cfg, plan_continual_run(cfg))
    fit_heads_to_stream(model, experiences)
    features = torch.randn(50, model.backbone.num_features, generator=torch.Generator().manual_seed(1))

    for experience in experiences:
        logits = TaskFeatureHead(model)(features, experience.task_label)
        others = sorted(set(range(10)) - set(experience.classes))
        assert set(logits.argmax(dim=1).tolist()) <= set(experience.classes)
        assert torch.all(logits[:, others] == MASKED_LOGIT)


def test_stream_with_other_task_labels_rejected(cache_dir):
    cfg = task_cfg(cache_dir)
    model, _ = server_model(cfg)
    class_cfg = task_cfg(cache_dir, stream="split-fmnist")
    class_incremental = federated_stream(class_cfg, plan_continual_run(class_cfg))

    with pytest.raises(ValueError, match=r"task labels 0 to 2 in order, got task labels \[0, 0, 0\]"):
        fit_heads_to_stream(model, class_incremental)


def test_task_label_without_head_rejected(cache_dir):
    model, _ = server_model(task_cfg(cache_dir))
    features = torch.zeros(2, model.backbone.num_features)

    with pytest.raises(ValueError, match="task label 3 has no head"):
        TaskFeatureHead(model)(features, torch.tensor([0, 3]))


def test_shared_head_model_keeps_feature_head(cache_dir):
    model, _ = server_model(task_cfg(cache_dir, stream="split-fmnist"))

    assert type(feature_head_for(model)) is FeatureHead
    with pytest.raises(TypeError, match="whose head is TaskHeads"):
        TaskFeatureHead(model)


def test_server_evaluator_uses_task_head(cache_dir):
    cfg = task_cfg(cache_dir)
    model, _ = server_model(cfg)
    fit_heads_to_stream(model, federated_stream(cfg, plan_continual_run(cfg)))
    generator = torch.Generator().manual_seed(2)
    features = [torch.randn(40, model.backbone.num_features, generator=generator) for _ in range(NUM_TASKS)]
    labels = [torch.randint(0, 10, (40,), generator=generator) for _ in range(NUM_TASKS)]
    evaluator = TaskEvaluator(model, features, labels, TaskSchedule(NUM_TASKS, 1))
    state = model.trainable_state_dict()

    evaluator(1, to_array_record(state))
    before = list(evaluator.latest)
    evaluator(1, to_array_record(perturbed(state, head=2)))
    after = list(evaluator.latest)

    assert after[:2] == before[:2]
    expected = evaluate_task(model, features[2], labels[2], task_label=2).accuracy
    assert after[2] == expected


def test_node_validation_uses_task_head(cache_dir, tmp_path):
    cfg = task_cfg(cache_dir)
    model, sha256 = server_model(cfg)
    state = train_rounds(cfg, node_context(cfg, tmp_path), model.trainable_state_dict(), sha256, [1, 2])

    first = app(instruction("evaluate", state, sha256, 2), node_context(cfg, tmp_path)).content["metrics"]
    second = app(instruction("evaluate", perturbed(state, head=0), sha256, 2), node_context(cfg, tmp_path))
    second = second.content["metrics"]

    for task in (1, 2):
        assert float(second[f"val-accuracy-task-{task}"]) == float(first[f"val-accuracy-task-{task}"])
    # After two rounds on task 0, head 0 beats chance among task 0's classes; noise weights do not.
    assert float(first["val-accuracy-task-0"]) > 0.6


def test_replay_trains_buffer_through_own_heads(cache_dir, tmp_path, monkeypatch):
    cfg = task_cfg(cache_dir)
    model, sha256 = server_model(cfg)
    context = node_context(cfg, tmp_path)
    state = train_rounds(cfg, context, model.trainable_state_dict(), sha256, [1, 2])
    node = the_node()
    calls = record_head_calls(monkeypatch)

    after = train_rounds(cfg, context, state, sha256, [3])

    training_calls = [(task, rows) for task, rows in calls if len(rows)]
    heads_used = {task for task, _ in training_calls}
    assert heads_used == {0, 1}
    # In feature-extraction mode a head's input is the cached feature row itself.
    for task, rows in training_calls:
        assert rows_within(rows, torch.cat([node.tasks[task].train_inputs, node.tasks[task].val_inputs]))
    assert not torch.equal(after["head.heads.0.fc.weight"], state["head.heads.0.fc.weight"])
    assert torch.equal(after["head.heads.2.fc.weight"], state["head.heads.2.fc.weight"])


def test_naive_leaves_earlier_heads_unchanged(cache_dir, tmp_path):
    cfg = task_cfg(cache_dir, cl_strategy="naive")
    model, sha256 = server_model(cfg)
    context = node_context(cfg, tmp_path)
    state = train_rounds(cfg, context, model.trainable_state_dict(), sha256, [1, 2])

    after = train_rounds(cfg, context, state, sha256, [3, 4])

    for key in ("head.heads.0.fc.weight", "head.heads.0.fc.bias", "head.heads.2.fc.weight"):
        assert torch.equal(after[key], state[key]), key
    assert not torch.equal(after["head.heads.1.fc.weight"], state["head.heads.1.fc.weight"])


def test_restarted_node_routes_replay_by_task(cache_dir, tmp_path, monkeypatch):
    cfg = task_cfg(cache_dir)
    model, sha256 = server_model(cfg)
    state = train_rounds(cfg, node_context(cfg, tmp_path), model.trainable_state_dict(), sha256, [1, 2])

    continual_node._NODES.clear()  # the node process restarts between tasks
    calls = record_head_calls(monkeypatch)
    train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [3])
    node = the_node()

    assert {task for task, rows in calls if len(rows)} == {0, 1}
    for task, rows in calls:
        if len(rows):
            assert rows_within(rows, torch.cat([node.tasks[task].train_inputs, node.tasks[task].val_inputs]))
    # The rebuilt model restricts its heads to their tasks' classes again.
    classes = [set(e.classes) for e in federated_stream(cfg, plan_continual_run(cfg))]
    for task in range(NUM_TASKS):
        assert set(node.model.head.class_mask[task].nonzero().flatten().tolist()) == classes[task]


def test_restarted_lwf_node_distils_earlier_head(cache_dir, tmp_path, monkeypatch):
    cfg = task_cfg(cache_dir, cl_strategy="lwf")
    model, sha256 = server_model(cfg)
    state = train_rounds(cfg, node_context(cfg, tmp_path), model.trainable_state_dict(), sha256, [1, 2])

    continual_node._NODES.clear()  # the node process restarts between tasks
    calls = record_head_calls(monkeypatch)
    train_rounds(cfg, node_context(cfg, tmp_path), state, sha256, [3])
    node = the_node()

    # Task 1's data goes through head 1 for the loss and through head 0 for distillation.
    task_1_rows = torch.cat([node.tasks[1].train_inputs, node.tasks[1].val_inputs])
    distilled = [rows for task, rows in calls if task == 0 and len(rows)]
    assert distilled
    assert all(rows_within(rows, task_1_rows) for rows in distilled)
    payload = torch.load(tmp_path / RUN_KEY / "task-1.pt", weights_only=False)
    (lwf,) = [entry for key, entry in payload["plugins"].items() if key.endswith("LwFPlugin")]
    assert sorted(lwf["lwf"].prev_classes_by_task) == [0, 1]
    assert lwf["lwf"].prev_model.known_train_tasks_labels == {0, 1}


def test_strategy_trains_task_feature_head(cache_dir):
    cfg = task_cfg(cache_dir)
    model, _ = server_model(cfg)
    network = feature_head_for(model, known_tasks=range(2))

    strategy = create_strategy("latent-replay", network)

    assert strategy.model is network
    assert network.known_train_tasks_labels == {0, 1}
