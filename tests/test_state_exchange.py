"""State dict <-> ArrayRecord exchange, hashing and key/shape checks."""

import numpy as np
import pytest
import torch
import torchvision

from fedgraft.models.state import (
    ParameterMismatchError,
    array_record_nbytes,
    check_arrays_match,
    state_dict_sha256,
    to_array_record,
    to_state_dict,
)


@pytest.fixture(scope="module")
def resnet18_state():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None)
    # Move BatchNorm statistics and counters away from their initial values.
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    return model.state_dict()


def test_resnet18_round_trip_exact(resnet18_state):
    back = to_state_dict(to_array_record(resnet18_state))

    assert list(back) == list(resnet18_state)
    for key, tensor in resnet18_state.items():
        assert back[key].dtype == tensor.dtype, key
        assert back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def test_round_trip_keeps_zero_dim_int64_counter(resnet18_state):
    back = to_state_dict(to_array_record(resnet18_state))
    counter = back["bn1.num_batches_tracked"]

    assert counter.dtype == torch.int64
    assert counter.shape == torch.Size([])
    assert int(counter) == 1


def test_round_trip_loads_into_model(resnet18_state):
    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(to_state_dict(to_array_record(resnet18_state)))

    assert state_dict_sha256(model.state_dict()) == state_dict_sha256(resnet18_state)


def test_sha256_ignores_key_order_but_not_values(resnet18_state):
    reordered = dict(reversed(list(resnet18_state.items())))
    changed = dict(resnet18_state)
    changed["fc.bias"] = changed["fc.bias"].clone()
    changed["fc.bias"][0] += 1e-6

    assert state_dict_sha256(reordered) == state_dict_sha256(resnet18_state)
    assert state_dict_sha256(changed) != state_dict_sha256(resnet18_state)


def test_nbytes_close_to_raw_tensor_bytes(resnet18_state):
    raw = sum(t.numel() * t.element_size() for t in resnet18_state.values())
    sent = array_record_nbytes(to_array_record(resnet18_state))

    # Each array adds a small header (.npy format) to its raw bytes.
    assert raw < sent < raw * 1.01


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"a": np.zeros(3, np.float32)}, "missing parameter 'b'"),
        ({"a": np.zeros(3, np.float32), "b": np.zeros((), np.int64), "c": np.zeros(1)}, "unexpected parameter 'c'"),
        ({"a": np.zeros(4, np.float32), "b": np.zeros((), np.int64)}, "parameter 'a' has shape (4,), expected (3,)"),
        ({"a": np.zeros(3, np.float32), "b": np.zeros((), np.int32)}, "parameter 'b' has dtype int32, expected int64"),
    ],
)
def test_check_arrays_match_names_key(arrays, message):
    expected = {"a": torch.zeros(3), "b": torch.zeros((), dtype=torch.int64)}

    with pytest.raises(ParameterMismatchError) as err:
        check_arrays_match(arrays, expected)

    assert str(err.value).startswith(message)
