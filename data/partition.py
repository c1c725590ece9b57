"""Partitioning of one labelled dataset across federated clients.

Three schemes are available: IID, Dirichlet label skew and label shards. The shards scheme
is a variant of the pathological non-IID split of McMahan et al., "Communication-Efficient
Learning of Deep Networks from Decentralized Data" (AISTATS 2017), that guarantees each client
exactly ``classes_per_client`` classes.
Every function works on the label array only and returns sorted int64 indices into it. No
sample goes to more than one client. All randomness comes from ``np.random.default_rng``
seeded by the caller, so the same inputs always give identical arrays.
"""

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

__all__ = [
    "ClientSplit",
    "PartitionError",
    "PartitionScheme",
    "label_counts",
    "partition_dataset",
    "partition_dirichlet",
    "partition_iid",
    "partition_shards",
    "split_client",
]


class PartitionScheme(str, Enum):
    """Scheme that spreads a dataset's samples across clients."""

    IID = "iid"
    DIRICHLET = "dirichlet"
    SHARDS = "shards"


class PartitionError(ValueError):
    """An invalid partitioning request. The message names the value and the valid range."""


@dataclass(frozen=True)
class ClientSplit:
    """One client's samples as sorted int64 indices into the source dataset."""

    train: np.ndarray
    val: np.ndarray


def partition_iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Shuffle all samples and deal them to ``num_clients`` clients in near-equal parts.

    Part sizes differ by at most one sample.
    """
    labels = _check_labels(labels)
    _check_num_clients(num_clients, len(labels))

    rng = _make_rng(seed)
    order = rng.permutation(len(labels))
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, num_clients)]


def partition_dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, seed: int
) -> list[np.ndarray]:
    """Split each class across clients by proportions drawn from Dir(alpha).

    Smaller ``alpha`` gives more label skew: at 0.1 most clients see a few classes, at 100
    the split is close to IID. A client may receive zero samples, and the caller is expected
    to report it. The split is not redrawn until every client has data, because that would
    bias the proportions.
    """
    labels = _check_labels(labels)
    _check_num_clients(num_clients, len(labels))
    if not (math.isfinite(alpha) and alpha > 0):
        raise PartitionError(
            f"Dirichlet alpha must be a finite number > 0, got {alpha}. Use a small value such "
            "as 0.1 for strong label skew or a large one such as 100 for a near-IID split."
        )

    rng = _make_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for label in np.unique(labels):
        class_indices = rng.permutation(np.flatnonzero(labels == label))
        proportions = rng.dirichlet(np.full(num_clients, alpha))

        # Cut at the cumulative proportions. np.split ends the last chunk at the class end.
        cuts = (np.cumsum(proportions)[:-1] * len(class_indices)).astype(np.int64)
        for client, chunk in enumerate(np.split(class_indices, cuts)):
            parts[client].append(chunk)

    return [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in parts]


def partition_shards(
    labels: np.ndarray, num_clients: int, classes_per_client: int, seed: int
) -> list[np.ndarray]:
    """Give each client ``classes_per_client`` shards, each of a different class.

    The samples of each class are shuffled and cut into shards, so the classes together form
    ``num_clients * classes_per_client`` shards ordered by label. Each class gets an equal
    number of shards, except that a randomly chosen few get one more when the total does not
    divide evenly. Client ``c`` receives the shards at positions ``c``, ``c + num_clients``,
    ``c + 2 * num_clients`` and so on of that order, under a seeded shuffle of the class order
    and of the clients. No class has more than ``num_clients`` shards, so a client never gets
    two shards of one class and has samples of exactly ``classes_per_client`` classes.
    """
    labels = _check_labels(labels)
    _check_num_clients(num_clients, len(labels))
    classes = np.unique(labels)
    if not _is_integer(classes_per_client) or not 1 <= classes_per_client <= len(classes):
        raise PartitionError(
            f"classes_per_client must lie in [1, {len(classes)}], got {classes_per_client}. "
            f"The labels contain {len(classes)} classes, so no client can see more."
        )

    rng = _make_rng(seed)
    num_shards = num_clients * classes_per_client
    class_order = rng.permutation(classes)
    shards_per_class = np.full(len(classes), num_shards // len(classes), dtype=np.int64)
    shards_per_class[: num_shards % len(classes)] += 1

    # Cut each class into its shards, so shard_list is ordered by class_order. With fewer
    # shards than classes, some classes get no shard and their samples stay unassigned.
    shard_list: list[np.ndarray] = []
    for label, num_class_shards in zip(class_order, shards_per_class, strict=True):
        if num_class_shards == 0:
            continue
        class_indices = rng.permutation(np.flatnonzero(labels == label))
        if len(class_indices) < num_class_shards:
            raise PartitionError(
                f"Class {label} has {len(class_indices)} samples but needs {num_class_shards} "
                f"shards for {num_clients} clients with {classes_per_client} classes each. "
                "Use fewer clients or a smaller classes_per_client."
            )
        shard_list.extend(np.array_split(class_indices, num_class_shards))

    client_order = rng.permutation(num_clients)
    parts: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * num_clients
    for position, client in enumerate(client_order):
        # The slice contains exactly classes_per_client shards because shard_list has
        # num_clients * classes_per_client of them.
        dealt = shard_list[position::num_clients]
        parts[client] = np.sort(np.concatenate(dealt)).astype(np.int64)
    return parts


def split_client(
    indices: np.ndarray, val_fraction: float, max_samples: int | None, seed: int
) -> ClientSplit:
    """Cap one client's samples at ``max_samples`` and split them into train and val.

    The cap keeps a seeded random subset, so label proportions are kept in expectation. Val
    gets ``round(val_fraction * n)`` of the ``n`` remaining samples, at least 1 when
    ``val_fraction > 0`` and ``n >= 2``. Train always keeps at least 1 sample when ``n >= 1``.
    """
    _check_val_fraction(val_fraction)
    _check_max_samples(max_samples)
    indices = np.asarray(indices)
    if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
        raise PartitionError(
            f"split_client expects a 1-D integer index array, got dtype {indices.dtype} and "
            f"shape {indices.shape}."
        )
    indices = indices.astype(np.int64)
    if len(np.unique(indices)) != len(indices):
        raise PartitionError(
            "split_client expects unique indices, got repeated ones. Pass the client's "
            "indices from one of the partition functions."
        )

    rng = _make_rng(seed)
    if max_samples is not None and len(indices) > max_samples:
        indices = rng.choice(indices, size=max_samples, replace=False)
    shuffled = rng.permutation(indices)

    num_samples = len(shuffled)
    num_val = round(val_fraction * num_samples)
    if val_fraction > 0 and num_samples >= 2:
        num_val = max(num_val, 1)
    num_val = min(num_val, max(num_samples - 1, 0))

    return ClientSplit(
        train=np.sort(shuffled[num_val:]).astype(np.int64),
        val=np.sort(shuffled[:num_val]).astype(np.int64),
    )


def partition_dataset(
    labels: np.ndarray,
    num_clients: int,
    scheme: PartitionScheme | str,
    *,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    max_samples: int | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> list[ClientSplit]:
    """Partition ``labels`` across clients with ``scheme`` and split each client into train and val.

    ``alpha`` is used only by the Dirichlet scheme and ``classes_per_client`` only by the
    shards scheme. ``max_samples`` caps each client's train and val samples together.
    """
    scheme = _parse_scheme(scheme)
    _check_val_fraction(val_fraction)
    _check_max_samples(max_samples)

    if scheme is PartitionScheme.IID:
        parts = partition_iid(labels, num_clients, seed)
    elif scheme is PartitionScheme.DIRICHLET:
        parts = partition_dirichlet(labels, num_clients, alpha, seed)
    else:
        parts = partition_shards(labels, num_clients, classes_per_client, seed)

    # Each client gets its own seed stream, derived from (seed, client), so changing
    # one client's data does not change how the others are split.
    splits = []
    for client, part in enumerate(parts):
        client_seed = int(np.random.SeedSequence([seed, client]).generate_state(1)[0])
        splits.append(split_client(part, val_fraction, max_samples, client_seed))
    return splits


def label_counts(
    labels: np.ndarray, splits: Sequence[ClientSplit], num_classes: int
) -> np.ndarray:
    """Count each client's train samples per class, as a (num_clients, num_classes) int64 array."""
    labels = _check_labels(labels)
    if not _is_integer(num_classes) or num_classes < 1:
        raise PartitionError(f"num_classes must be at least 1, got {num_classes}.")

    counts = np.zeros((len(splits), num_classes), dtype=np.int64)
    for client, split in enumerate(splits):
        client_labels = labels[split.train]
        if client_labels.size > 0 and (
            client_labels.min() < 0 or client_labels.max() >= num_classes
        ):
            raise PartitionError(
                f"Client {client} has labels from {client_labels.min()} to "
                f"{client_labels.max()}, but num_classes is {num_classes}, so labels must lie "
                f"in [0, {num_classes - 1}]. Pass the length of the label map as num_classes."
            )
        counts[client] = np.bincount(client_labels, minlength=num_classes)
    return counts


def _parse_scheme(scheme: PartitionScheme | str) -> PartitionScheme:
    try:
        return PartitionScheme(scheme)
    except ValueError as error:
        known = [member.value for member in PartitionScheme]
        raise PartitionError(
            f"Unknown partition scheme {scheme!r}. Known schemes: {known}."
        ) from error


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _make_rng(seed: int) -> np.random.Generator:
    if not _is_integer(seed) or seed < 0:
        raise PartitionError(f"seed must be a non-negative integer, got {seed!r}.")
    return np.random.default_rng(seed)


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not (np.issubdtype(labels.dtype, np.integer) or labels.size == 0):
        raise PartitionError(
            f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
            f"{labels.shape}."
        )
    return labels.astype(np.int64, copy=False)


def _check_num_clients(num_clients: int, num_samples: int) -> None:
    if not _is_integer(num_clients) or num_clients < 1:
        raise PartitionError(f"num_clients must be at least 1, got {num_clients}.")
    if num_clients > num_samples:
        raise PartitionError(
            f"num_clients is {num_clients} but the dataset has only {num_samples} samples, so "
            f"some clients would get nothing. Use at most {num_samples} clients."
        )


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise PartitionError(
            f"val_fraction must lie in [0, 1), got {val_fraction}. Use 0 for no validation "
            "set or, for example, 0.1 to hold out 10% of each client's samples."
        )


def _check_max_samples(max_samples: int | None) -> None:
    if max_samples is not None and (not _is_integer(max_samples) or max_samples < 1):
        raise PartitionError(
            f"max_samples must be at least 1 or None for no cap, got {max_samples}."
        )
