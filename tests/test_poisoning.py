"""Poisoned updates: parsing, the transforms on hand-worked arrays, and which nodes apply them."""

import numpy as np
import pytest
from flower_messages import array_record

from fedgraft.client.poisoning import (
    Poison,
    PoisonKind,
    parse_poisoned_nodes,
    poison_reply_arrays,
    poison_update,
)
from fedgraft.config import ConfigError, RunConfig

GLOBAL = {"w": np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)}
# Each entry moved by +0.5, so the update is 0.5 everywhere.
TRAINED = {"w": GLOBAL["w"] + np.float32(0.5)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scale:100", Poison(PoisonKind.SCALE, 100.0)),
        ("scale:-2.5", Poison(PoisonKind.SCALE, -2.5)),
        (" sign-flip ", Poison(PoisonKind.SIGN_FLIP)),
        ("nan", Poison(PoisonKind.NAN)),
    ],
)
def test_poison_parse_valid(text, expected):
    assert Poison.parse(text) == expected


@pytest.mark.parametrize("text", ["scale:", "scale:abc", "scale:inf", "flip", "NaN", ""])
def test_poison_parse_rejects(text):
    with pytest.raises(ValueError, match="scale"):
        Poison.parse(text)


def test_parse_poisoned_nodes():
    assert parse_poisoned_nodes("0, 3,3,") == frozenset({0, 3})
    assert parse_poisoned_nodes("") == frozenset()
    with pytest.raises(ValueError, match="'-1' is not a partition id"):
        parse_poisoned_nodes("2,-1")


def test_scale_multiplies_update():
    poisoned = poison_update(TRAINED, GLOBAL, Poison.parse("scale:100"))

    # global + 100 * 0.5 = global + 50.
    np.testing.assert_allclose(poisoned["w"], GLOBAL["w"] + 50.0)
    assert poisoned["w"].dtype == np.float32


def test_sign_flip_negates_update():
    poisoned = poison_update(TRAINED, GLOBAL, Poison.parse("sign-flip"))

    np.testing.assert_allclose(poisoned["w"], GLOBAL["w"] - 0.5)


def test_nan_fills_float_arrays_only():
    counter = np.array(7, dtype=np.int64)
    trained = {**TRAINED, "bn.num_batches_tracked": counter}
    received = {**GLOBAL, "bn.num_batches_tracked": np.array(3, dtype=np.int64)}

    poisoned = poison_update(trained, received, Poison.parse("nan"))

    assert np.isnan(poisoned["w"]).all()
    assert poisoned["w"].shape == (2, 3)
    assert poisoned["bn.num_batches_tracked"] == 7
    assert poisoned["bn.num_batches_tracked"].dtype == np.int64


def poisoned_cfg(nodes: str, poison: str = "scale:100") -> RunConfig:
    return RunConfig(poisoned_nodes=nodes, poison=poison)


def test_listed_simulated_node_poisons():
    arrays = poison_reply_arrays(array_record(TRAINED), array_record(GLOBAL), poisoned_cfg("1,2"),
                                 {"partition-id": 2, "num-partitions": 10})

    np.testing.assert_allclose(arrays["w"].numpy(), GLOBAL["w"] + 50.0)


@pytest.mark.parametrize(
    ("nodes", "node_config"),
    [
        ("1,2", {"partition-id": 0, "num-partitions": 10}),  # not listed
        ("", {"partition-id": 2, "num-partitions": 10}),  # poisoning off
        ("2", {"partition-id": 2, "data-path": "/srv/site.npz"}),  # a deployed node
        ("0", {"data-path": "/srv/site.npz"}),  # a deployed node without partition id
    ],
)
def test_other_nodes_reply_unchanged(nodes, node_config):
    trained = array_record(TRAINED)
    cfg = poisoned_cfg(nodes) if nodes else RunConfig()

    arrays = poison_reply_arrays(trained, array_record(GLOBAL), cfg, node_config)

    assert arrays is trained


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"poison": "nan"}, "--poisoned-nodes is empty"),
        ({"poisoned_nodes": "1"}, "--poison is empty"),
        ({"poisoned_nodes": "1,x", "poison": "nan"}, "'x' is not a partition id"),
        ({"poisoned_nodes": "10", "poison": "nan"}, "partitions 0 to 9"),
        ({"poisoned_nodes": "1", "poison": "scale:ten"}, "--poison is invalid"),
    ],
)
def test_config_rejects_bad_poisoning(options, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**options).validate()


def test_config_accepts_poisoning():
    RunConfig(poisoned_nodes="0, 9", poison="sign-flip").validate()
