"""The ClientApp: a node that receives the backbone once and then trains the head locally.

Message types it handles:

- `query.backbone`: the server announces the backbone's SHA-256. The node replies whether
  its store has it. When the message carries the weights, the node verifies and stores
  them.
- `train`: load the round's trainable arrays, train on the node's private data, reply with
  the updated arrays and `num-examples` (the training-set size, not a batch count). In a
  continual run (`stream` set) the node trains on its current task with its continual
  strategy, see `fedgraft.client.continual_node`.
- `evaluate`: reply with loss and accuracy on the node's validation split, per task in a
  continual run.

Private images never leave the node: replies carry only parameter arrays and metrics.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgraft.client.backbone_store import BackboneStore
from fedgraft.client.continual_node import ContinualNode, open_continual_node
from fedgraft.client.node_session import NodeSession, open_session
from fedgraft.client.poisoning import poison_reply_arrays
from fedgraft.client.privacy import dp_clipping_mod
from fedgraft.client.training import SGDSettings, evaluate_features, train_on_features
from fedgraft.config import RunConfig
from fedgraft.log_setup import configure_logging
from fedgraft.models.state import to_array_record, to_state_dict

__all__ = ["app"]

logger = logging.getLogger(__name__)

# The mod clips train updates only in runs with client-side differential privacy.
app = ClientApp(mods=[dp_clipping_mod])


def _store(context: Context, cfg: RunConfig) -> BackboneStore:
    return BackboneStore(context.node_config.get("cache-dir", cfg.cache_dir))


@app.query("backbone")
def backbone_query(msg: Message, context: Context) -> Message:
    """Report whether this node has the announced backbone, storing it when it is attached."""
    cfg = RunConfig.from_run_config(context.run_config)
    store = _store(context, cfg)
    sha256 = str(msg.content["backbone"]["sha256"])
    if "weights" in msg.content.array_records:
        store.save(to_state_dict(msg.content["weights"]), sha256)
    reply = ConfigRecord({"has-backbone": store.has(sha256), "node-name": _node_name(context)})
    return Message(content=RecordDict({"backbone": reply}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the trainable part on this node's data, starting from the round's global arrays."""
    cfg = RunConfig.from_run_config(context.run_config)
    config = msg.content["config"]
    incoming = to_state_dict(msg.content["arrays"])
    if cfg.stream:
        node = _continual_node(context, cfg, str(config["backbone-sha256"]))
        node.model.load_trainable_state_dict(incoming)
        metrics = MetricRecord(node.train_round(int(config["server-round"]), str(config["continual-run"])))
        arrays = to_array_record(node.model.trainable_state_dict())
    else:
        metrics, arrays = _train_single_task(context, cfg, config, incoming)

    arrays = poison_reply_arrays(arrays, msg.content["arrays"], cfg, context.node_config)
    return Message(content=RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)


def _train_single_task(
    context: Context, cfg: RunConfig, config: ConfigRecord, incoming: dict[str, torch.Tensor]
) -> tuple[MetricRecord, ArrayRecord]:
    session = _session(context, cfg, str(config["backbone-sha256"]))
    session.model.load_trainable_state_dict(incoming)

    settings = SGDSettings(
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        optimizer=cfg.optimizer,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        proximal_mu=float(config.get("proximal-mu", 0.0)),
    )
    # Seeded by node and round, not by Flower's node id, so that runs repeat exactly.
    generator = torch.Generator().manual_seed(
        cfg.seed * 1_000_003 + int(config["server-round"]) * 1009 + session.seed_offset
    )
    result = train_on_features(
        session.model, session.train_inputs, session.train_labels, settings, generator, encode=session.encode
    )

    metrics = MetricRecord({
        "num-examples": result.num_examples,
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
    })
    return metrics, to_array_record(session.model.trainable_state_dict())


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the round's global arrays on this node's validation split."""
    cfg = RunConfig.from_run_config(context.run_config)
    config = msg.content["config"]
    if cfg.stream:
        node = _continual_node(context, cfg, str(config["backbone-sha256"]))
        node.model.load_trainable_state_dict(to_state_dict(msg.content["arrays"]))
        return Message(content=RecordDict({"metrics": MetricRecord(node.evaluate_round())}), reply_to=msg)

    session = _session(context, cfg, str(config["backbone-sha256"]))
    session.model.load_trainable_state_dict(to_state_dict(msg.content["arrays"]))
    result = evaluate_features(session.model, session.val_inputs, session.val_labels, encode=session.encode)
    metrics = MetricRecord({
        "num-examples": result.num_examples,
        "val-loss": result.loss,
        "val-accuracy": result.accuracy,
    })
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def _session(context: Context, cfg: RunConfig, backbone_sha256: str) -> NodeSession:
    configure_logging()
    return open_session(
        run_id=context.run_id,
        cfg=cfg,
        node_config=dict(context.node_config),
        store=_store(context, cfg),
        backbone_sha256=backbone_sha256,
    )


def _continual_node(context: Context, cfg: RunConfig, backbone_sha256: str) -> ContinualNode:
    configure_logging()
    return open_continual_node(
        run_id=context.run_id,
        cfg=cfg,
        node_config=dict(context.node_config),
        backbones=_store(context, cfg),
        backbone_sha256=backbone_sha256,
    )


def _node_name(context: Context) -> str:
    node_config = context.node_config
    if "data-path" in node_config:
        return str(node_config["data-path"])
    return f"partition {node_config.get('partition-id', '?')}"
