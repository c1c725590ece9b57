"""What a node sends back: the real ClientApp on real Fashion-MNIST images, called without a network.

The node runs a small random-weight CNN on 28-pixel images, so a train round takes well
under a second, but every handler, mod and record is the one a simulation uses.
"""

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedgraft.client.app import app
from fedgraft.client.backbone_store import BackboneStore
from fedgraft.config import RunConfig
from fedgraft.models.factory import build_transfer_model
from fedgraft.models.state import state_dict_sha256, to_array_record

NUM_CLASSES = 10
PARTITION_ID = 1


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Messages built here act as the server's instructions to node 7.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 0)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("node-cache")


def small_cfg(cache_dir, **options) -> RunConfig:
    return RunConfig(
        backbone="small_cnn", weights="random", image_size=28, num_clients=3,
        max_samples_per_client=60, local_epochs=1, batch_size=16, seed=5, cache_dir=str(cache_dir),
        **options,
    )


def server_side(cfg: RunConfig):
    """Return the global trainable state and the backbone hash, with the backbone in the node's store."""
    model = build_transfer_model(cfg, num_classes=NUM_CLASSES)
    sha256 = state_dict_sha256(model.backbone.state_dict())
    BackboneStore(cfg.cache_dir).save(model.backbone.state_dict(), sha256)
    return model.trainable_state_dict(), sha256


def instruction(message_type: str, state, sha256: str, **config) -> Message:
    content = RecordDict({
        "arrays": to_array_record(state),
        "config": ConfigRecord({"backbone-sha256": sha256, "server-round": 1, **config}),
    })
    return Message(content=content, dst_node_id=7, message_type=message_type)


def node_context(cfg: RunConfig) -> Context:
    return Context(
        run_id=1, node_id=7, node_config={"partition-id": PARTITION_ID, "num-partitions": cfg.num_clients},
        state=RecordDict(), run_config=cfg.to_run_config(),
    )


def update_of(reply: Message, state) -> dict[str, np.ndarray]:
    return {key: array.numpy() - state[key].numpy() for key, array in reply.content["arrays"].items()}


def norm(update: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum(np.square(value, dtype=np.float64)) for value in update.values())))


def test_train_reply_only_arrays_and_metrics(cache_dir):
    cfg = small_cfg(cache_dir)
    state, sha256 = server_side(cfg)

    reply = app(instruction("train", state, sha256), node_context(cfg))

    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {"arrays", "metrics"}
    assert isinstance(reply.content["arrays"], ArrayRecord)
    assert isinstance(reply.content["metrics"], MetricRecord)
    assert len(reply.content.config_records) == 0
    arrays = reply.content["arrays"]
    assert list(arrays.keys()) == list(state.keys())
    for key, array in arrays.items():
        assert tuple(array.shape) == tuple(state[key].shape), key
        assert array.dtype == str(state[key].numpy().dtype), key
    assert set(reply.content["metrics"].keys()) == {"num-examples", "train-loss", "train-accuracy"}
    assert all(isinstance(value, (int, float)) for value in reply.content["metrics"].values())


def test_evaluate_reply_holds_only_metrics(cache_dir):
    cfg = small_cfg(cache_dir)
    state, sha256 = server_side(cfg)

    reply = app(instruction("evaluate", state, sha256), node_context(cfg))

    assert not reply.has_error(), reply.error
    assert set(reply.content.keys()) == {"metrics"}
    assert set(reply.content["metrics"].keys()) == {"num-examples", "val-loss", "val-accuracy"}
    assert all(isinstance(value, (int, float)) for value in reply.content["metrics"].values())


def test_listed_node_scales_its_update(cache_dir):
    clean_cfg = small_cfg(cache_dir)
    state, sha256 = server_side(clean_cfg)
    clean = app(instruction("train", state, sha256), node_context(clean_cfg))

    poisoned_cfg = small_cfg(cache_dir, poisoned_nodes=str(PARTITION_ID), poison="scale:100")
    poisoned = app(instruction("train", state, sha256), node_context(poisoned_cfg))

    # The same seed trains the same update, which the poisoned node sends 100 times over.
    for key, value in update_of(poisoned, state).items():
        np.testing.assert_allclose(value, 100 * update_of(clean, state)[key], rtol=1e-3, atol=1e-5)
    assert poisoned.content["metrics"]["num-examples"] == clean.content["metrics"]["num-examples"]


def test_client_fixed_dp_clips_the_update(cache_dir):
    cfg = small_cfg(cache_dir, dp="client-fixed")
    state, sha256 = server_side(cfg)
    unclipped = norm(update_of(app(instruction("train", state, sha256), node_context(small_cfg(cache_dir))), state))
    clip = unclipped / 4

    reply = app(instruction("train", state, sha256, clipping_norm=clip), node_context(cfg))

    assert not reply.has_error(), reply.error
    assert norm(update_of(reply, state)) == pytest.approx(clip, rel=1e-4)


def test_client_adaptive_dp_reports_norm_bit(cache_dir):
    cfg = small_cfg(cache_dir, dp="client-adaptive", dp_noise_multiplier=0.5)
    state, sha256 = server_side(cfg)
    unclipped = norm(update_of(app(instruction("train", state, sha256), node_context(small_cfg(cache_dir))), state))

    clipped = app(instruction("train", state, sha256, clipping_norm=unclipped / 4), node_context(cfg))
    unclipped_reply = app(instruction("train", state, sha256, clipping_norm=unclipped * 4), node_context(cfg))

    assert not clipped.has_error(), clipped.error
    assert clipped.content["metrics"]["norm_bit"] == 1
    assert norm(update_of(clipped, state)) == pytest.approx(unclipped / 4, rel=1e-4)
    assert unclipped_reply.content["metrics"]["norm_bit"] == 0
    assert norm(update_of(unclipped_reply, state)) == pytest.approx(unclipped, rel=1e-4)


def test_client_dp_mod_leaves_evaluate_alone(cache_dir):
    cfg = small_cfg(cache_dir, dp="client-fixed")
    state, sha256 = server_side(cfg)

    # Evaluate instructions carry no clipping norm, which Flower's mod alone would reject.
    reply = app(instruction("evaluate", state, sha256), node_context(cfg))

    assert not reply.has_error(), reply.error
