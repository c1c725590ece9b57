"""State-dict helpers shared by the server and the client: hashing, byte counts and exchange.

Parameters travel between server and client as Flower `ArrayRecord`s built from a torch
state dict. Names, shapes and dtypes survive the trip, 0-d integer counters such as
BatchNorm's `num_batches_tracked` included.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord
from safetensors.torch import load_file, save_file

__all__ = [
    "ParameterMismatchError",
    "array_record_nbytes",
    "check_arrays_match",
    "load_state_file",
    "save_state_file",
    "state_dict_sha256",
    "to_array_record",
    "to_state_dict",
]


class ParameterMismatchError(ValueError):
    """Arrays whose names, shapes or dtypes differ from the ones expected."""


def state_dict_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """Hash a state dict by its names, dtypes, shapes and values, in sorted key order.

    Two state dicts with the same hash hold the same tensors whatever their insertion
    order, so a node can tell whether its cached backbone equals the server's.
    """
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        # Raw bytes work for every dtype, bfloat16 included, which numpy lacks.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def to_array_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """Convert a state dict into an ArrayRecord that keeps every name, shape and dtype."""
    return ArrayRecord({key: tensor.detach().cpu() for key, tensor in state.items()})


def to_state_dict(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """Convert an ArrayRecord back into a state dict of CPU tensors."""
    return {key: torch.from_numpy(np.array(array.numpy(), copy=True)) for key, array in record.items()}


def array_record_nbytes(record: ArrayRecord) -> int:
    """Return the serialized size of an ArrayRecord's arrays in bytes, headers included."""
    return sum(len(array.data) for array in record.values())


def check_arrays_match(
    arrays: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray | torch.Tensor]
) -> None:
    """Raise ParameterMismatchError naming the first key whose name, shape or dtype differs."""
    missing = sorted(set(expected) - set(arrays))
    if missing:
        raise ParameterMismatchError(f"missing parameter {missing[0]!r} ({len(missing)} missing in all)")
    unexpected = sorted(set(arrays) - set(expected))
    if unexpected:
        raise ParameterMismatchError(
            f"unexpected parameter {unexpected[0]!r} ({len(unexpected)} unexpected in all)"
        )
    for key, reference in expected.items():
        got = arrays[key]
        ref_shape = tuple(reference.shape)
        if tuple(got.shape) != ref_shape:
            raise ParameterMismatchError(
                f"parameter {key!r} has shape {tuple(got.shape)}, expected {ref_shape}"
            )
        ref_dtype = _numpy_dtype(reference)
        if got.dtype != ref_dtype:
            raise ParameterMismatchError(f"parameter {key!r} has dtype {got.dtype}, expected {ref_dtype}")


def _numpy_dtype(value: np.ndarray | torch.Tensor) -> np.dtype:
    if isinstance(value, torch.Tensor):
        return torch.empty((), dtype=value.dtype).numpy().dtype
    return value.dtype


def save_state_file(state: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a state dict as safetensors atomically: a crash leaves the old file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tensors = {key: tensor.detach().cpu().contiguous() for key, tensor in state.items()}
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors state dict written by save_state_file."""
    return load_file(str(path))
