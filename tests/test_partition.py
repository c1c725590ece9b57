"""Tests for fedgraft.data.partition on real Fashion-MNIST test labels and tiny arrays."""

import numpy as np
import pytest

from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.data.partition import (
    ClientSplit,
    PartitionError,
    PartitionScheme,
    label_counts,
    partition_dataset,
    partition_dirichlet,
    partition_iid,
    partition_shards,
    split_client,
)

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    """The 10000 labels of the Fashion-MNIST test split, 1000 per class."""
    return load_fashion_mnist("test").labels


def _partition(labels: np.ndarray, scheme: str, seed: int) -> list[np.ndarray]:
    if scheme == "iid":
        return partition_iid(labels, 10, seed)
    if scheme == "dirichlet":
        return partition_dirichlet(labels, 10, 0.5, seed)
    return partition_shards(labels, 10, 2, seed)


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    entropies = []
    for part in parts:
        if len(part) == 0:
            continue
        proportions = np.bincount(labels[part], minlength=NUM_CLASSES) / len(part)
        nonzero = proportions[proportions > 0]
        entropies.append(float(-(nonzero * np.log(nonzero)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_same_seed_identical(labels, scheme):
    first = _partition(labels, scheme, seed=3)
    second = _partition(labels, scheme, seed=3)
    assert len(first) == len(second)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_other_seed_differs(labels, scheme):
    first = _partition(labels, scheme, seed=3)
    second = _partition(labels, scheme, seed=4)
    assert any(
        len(a) != len(b) or not np.array_equal(a, b) for a, b in zip(first, second, strict=True)
    )


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_indices_unique_sorted_in_range(labels, scheme):
    parts = _partition(labels, scheme, seed=0)
    everything = np.concatenate(parts)
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0
    assert everything.max() < len(labels)
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)


@pytest.mark.parametrize("scheme", ["iid", "dirichlet", "shards"])
def test_partition_uses_every_sample(labels, scheme):
    # With 10 clients x 2 classes, every class gets 2 shards, so shards also cover all.
    parts = _partition(labels, scheme, seed=0)
    assert sum(len(part) for part in parts) == len(labels)


@pytest.mark.parametrize("scheme", list(PartitionScheme))
def test_partition_dataset_no_index_reused(labels, scheme):
    splits = partition_dataset(labels, 8, scheme, seed=5, val_fraction=0.2)
    assert len(splits) == 8
    everything = np.concatenate([np.concatenate([s.train, s.val]) for s in splits])
    assert len(np.unique(everything)) == len(everything)
    assert everything.min() >= 0
    assert everything.max() < len(labels)
    for split in splits:
        assert split.train.dtype == np.int64
        assert split.val.dtype == np.int64
        assert np.intersect1d(split.train, split.val).size == 0


def test_partition_dataset_leaves_labels_untouched(labels):
    original = labels.copy()
    splits = partition_dataset(labels, 5, "shards", classes_per_client=3, seed=1)
    np.testing.assert_array_equal(labels, original)
    counts = label_counts(labels, splits, NUM_CLASSES)
    # Counting the labels directly gives the same table, so indices map to global labels.
    for client, split in enumerate(splits):
        np.testing.assert_array_equal(
            counts[client], np.bincount(labels[split.train], minlength=NUM_CLASSES)
        )


@pytest.mark.parametrize("classes_per_client", [1, 2, 3, 7, 10])
def test_shards_client_sees_exactly_k_classes(labels, classes_per_client):
    parts = partition_shards(labels, 7, classes_per_client, seed=2)
    for part in parts:
        assert np.unique(labels[part]).size == classes_per_client


def test_shards_fewer_shards_than_classes(labels):
    # 2 clients x 2 classes = 4 shards over 10 classes: 6 classes stay unassigned.
    parts = partition_shards(labels, 2, 2, seed=0)
    used = np.unique(labels[np.concatenate(parts)])
    assert used.size == 4
    for part in parts:
        assert np.unique(labels[part]).size == 2


def test_shards_class_too_small_for_its_shards():
    labels = np.array([0, 0, 0, 0, 1])
    with pytest.raises(PartitionError, match="Class 1 has 1 samples"):
        partition_shards(labels, 4, 2, seed=0)


def test_dirichlet_small_alpha_more_skewed(labels):
    skewed = partition_dirichlet(labels, 10, 0.1, seed=0)
    near_iid = partition_dirichlet(labels, 10, 100.0, seed=0)
    skewed_entropy = _mean_label_entropy(labels, skewed)
    near_iid_entropy = _mean_label_entropy(labels, near_iid)
    assert skewed_entropy < near_iid_entropy - 0.5
    # Dir(100) is close to uniform, so its entropy is near the maximum log(10) = 2.30.
    assert near_iid_entropy > 2.2


def test_dirichlet_allows_empty_clients(labels):
    tiny = labels[:100]
    parts = partition_dirichlet(tiny, 50, 0.05, seed=0)
    assert len(parts) == 50
    assert any(len(part) == 0 for part in parts)
    assert sum(len(part) for part in parts) == 100
    for part in parts:
        assert part.dtype == np.int64


def test_partition_dataset_empty_client_split(labels):
    splits = partition_dataset(labels[:100], 50, "dirichlet", alpha=0.05, seed=0)
    empty = [split for split in splits if len(split.train) + len(split.val) == 0]
    assert empty
    for split in empty:
        assert split.train.shape == (0,)
        assert split.val.shape == (0,)


def test_iid_part_sizes_within_one(labels):
    parts = partition_iid(labels, 3, seed=0)
    sizes = [len(part) for part in parts]
    assert max(sizes) - min(sizes) <= 1
    assert sum(sizes) == len(labels)


def test_max_samples_caps_train_and_val(labels):
    splits = partition_dataset(labels, 4, "iid", max_samples=50, val_fraction=0.2, seed=0)
    for split in splits:
        assert len(split.train) + len(split.val) == 50
        assert len(split.val) == 10


def test_max_samples_above_client_size_keeps_all(labels):
    splits = partition_dataset(labels, 4, "iid", max_samples=10**6, val_fraction=0.0, seed=0)
    assert sum(len(split.train) for split in splits) == len(labels)
    assert all(len(split.val) == 0 for split in splits)


def test_split_client_train_val_disjoint():
    indices = np.arange(100, 140, dtype=np.int64)
    split = split_client(indices, val_fraction=0.25, max_samples=None, seed=0)
    assert isinstance(split, ClientSplit)
    assert len(split.val) == 10
    assert len(split.train) == 30
    assert np.intersect1d(split.train, split.val).size == 0
    np.testing.assert_array_equal(np.union1d(split.train, split.val), indices)
    assert np.all(np.diff(split.train) > 0)
    assert np.all(np.diff(split.val) > 0)


def test_split_client_keeps_one_train_one_val():
    two = np.array([7, 3], dtype=np.int64)
    split = split_client(two, val_fraction=0.01, max_samples=None, seed=0)
    assert len(split.train) == 1
    assert len(split.val) == 1
    split = split_client(two, val_fraction=0.99, max_samples=None, seed=0)
    assert len(split.train) == 1
    assert len(split.val) == 1


def test_split_client_single_sample_goes_to_train():
    split = split_client(np.array([5]), val_fraction=0.9, max_samples=None, seed=0)
    np.testing.assert_array_equal(split.train, [5])
    assert split.val.size == 0


def test_split_client_cap_is_seeded():
    indices = np.arange(1000)
    first = split_client(indices, 0.1, max_samples=100, seed=9)
    second = split_client(indices, 0.1, max_samples=100, seed=9)
    other = split_client(indices, 0.1, max_samples=100, seed=10)
    np.testing.assert_array_equal(first.train, second.train)
    np.testing.assert_array_equal(first.val, second.val)
    assert not np.array_equal(first.train, other.train)


def test_split_client_cap_keeps_label_proportions(labels):
    # A 2000-sample cap of the 10000 balanced labels keeps each class near 10%.
    split = split_client(np.arange(len(labels)), 0.0, max_samples=2000, seed=0)
    counts = np.bincount(labels[split.train], minlength=NUM_CLASSES)
    assert counts.sum() == 2000
    assert counts.min() > 140
    assert counts.max() < 260


def test_split_client_rejects_repeated_indices():
    with pytest.raises(PartitionError, match="unique"):
        split_client(np.array([1, 1, 2]), 0.1, None, seed=0)


def test_label_counts_worked_example():
    labels = np.array([0, 1, 1, 2, 2, 2])
    splits = [
        ClientSplit(train=np.array([0, 1, 3]), val=np.array([2])),
        ClientSplit(train=np.array([4, 5]), val=np.array([], dtype=np.int64)),
    ]
    counts = label_counts(labels, splits, num_classes=4)
    np.testing.assert_array_equal(counts, [[1, 1, 1, 0], [0, 0, 2, 0]])
    assert counts.dtype == np.int64


def test_label_counts_label_beyond_num_classes():
    labels = np.array([0, 5])
    splits = [ClientSplit(train=np.array([0, 1]), val=np.array([], dtype=np.int64))]
    with pytest.raises(PartitionError, match="num_classes is 3"):
        label_counts(labels, splits, num_classes=3)


def test_partition_scheme_accepts_string_and_enum(labels):
    from_string = partition_dataset(labels, 3, "dirichlet", seed=1)
    from_enum = partition_dataset(labels, 3, PartitionScheme.DIRICHLET, seed=1)
    for a, b in zip(from_string, from_enum, strict=True):
        np.testing.assert_array_equal(a.train, b.train)
        np.testing.assert_array_equal(a.val, b.val)


@pytest.mark.parametrize(
    ("kwargs", "expected_text"),
    [
        ({"num_clients": 0}, "num_clients must be at least 1, got 0"),
        ({"num_clients": -2}, "got -2"),
        ({"num_clients": 21}, "num_clients is 21 but the dataset has only 20 samples"),
        ({"scheme": "dirichlet", "alpha": 0.0}, "got 0.0"),
        ({"scheme": "dirichlet", "alpha": -1.5}, "got -1.5"),
        ({"scheme": "dirichlet", "alpha": float("nan")}, "got nan"),
        ({"scheme": "pathological"}, "'pathological'"),
        ({"scheme": "shards", "classes_per_client": 0}, "[1, 4], got 0"),
        ({"scheme": "shards", "classes_per_client": 5}, "[1, 4], got 5"),
        ({"val_fraction": 1.0}, "[0, 1), got 1.0"),
        ({"val_fraction": -0.1}, "[0, 1), got -0.1"),
        ({"max_samples": 0}, "got 0"),
        ({"seed": -1}, "got -1"),
    ],
)
def test_partition_dataset_bad_input(kwargs, expected_text):
    labels = np.repeat(np.arange(4), 5)
    arguments = {"num_clients": 2, "scheme": "iid"} | kwargs
    with pytest.raises(PartitionError) as raised:
        partition_dataset(labels, **arguments)
    assert expected_text in str(raised.value)


def test_unknown_scheme_lists_known_schemes():
    with pytest.raises(PartitionError) as raised:
        partition_dataset(np.arange(4), 2, "round-robin")
    message = str(raised.value)
    for scheme in PartitionScheme:
        assert scheme.value in message


def test_partition_rejects_float_labels():
    with pytest.raises(PartitionError, match="integer"):
        partition_iid(np.array([0.0, 1.0, 2.0]), 2, seed=0)


def test_partition_error_is_value_error():
    assert issubclass(PartitionError, ValueError)
