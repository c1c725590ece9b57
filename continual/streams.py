"""Task streams built offline from fedgraft's datasets, as plain data without Avalanche.

A stream is a list of `Experience`s in training order. Each experience has its own train
and test split, and every split keeps the global label map, so label 7 means the same
class in every experience. `fedgraft.continual.avalanche_adapter` turns a stream into an
Avalanche benchmark.

Three settings are built here:

- class-incremental: each experience brings new classes and the task label is always 0,
  so the model must tell every class seen so far apart;
- task-incremental: the same class split, with the experience index as task label,
  as used by multi-head models;
- domain-incremental: the same classes in every experience under a changing input
  distribution (a pixel permutation, a rotation, a new acquisition site).

`STREAMS` names the ready-made Fashion-MNIST streams and `create_stream` builds one by name.
"""

from __future__ import annotations

import logging
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedgraft.continual.errors import StreamError
from fedgraft.continual.shifts import (
    SHIFT_NAMES,
    ImageShift,
    contrast,
    gaussian_blur,
    gaussian_noise,
    identity,
    parse_shift,
    permuted_pixels,
    rotated,
)
from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.node_data import load_node_data

__all__ = [
    "SHIFT_NAMES",
    "SITE_SHIFTS",
    "STREAMS",
    "Experience",
    "ImageShift",
    "StreamError",
    "StreamSpec",
    "class_incremental",
    "contrast",
    "create_stream",
    "domain_incremental",
    "from_node_data",
    "gaussian_blur",
    "gaussian_noise",
    "identity",
    "parse_shift",
    "permuted_pixels",
    "rotated",
    "task_incremental",
]

logger = logging.getLogger(__name__)

# Acquisition sites of the "shifted-sites-fmnist" stream, in order: the original images,
# then a flat-contrast scanner, a defocused camera and a noisy sensor.
SITE_SHIFTS = ("identity", "contrast:0.5", "blur:1", "noise:25")


@dataclass(frozen=True)
class Experience:
    """One step of a task stream: the data a model trains on, then is tested on."""

    # Position in the stream, from 0.
    index: int
    # Task label: 0 for every experience of a class- or domain-incremental stream, the
    # experience index in a task-incremental stream.
    task_label: int
    # Training split, labels in the global label map.
    train: ImageArrays
    # Test split with the same label map as `train`.
    test: ImageArrays
    # Global class indices present in `train`, ascending.
    classes: tuple[int, ...]
    # What distinguishes this experience, such as "classes 3, 7" or "rotated:45".
    description: str = ""


def class_incremental(
    train: ImageArrays, test: ImageArrays, num_tasks: int = 5, seed: int | None = 0
) -> list[Experience]:
    """Split the classes into ``num_tasks`` groups, one experience per group, task label 0.

    The class order is a permutation of the training classes drawn from
    ``np.random.default_rng(seed)``. With ``seed=None`` the classes keep ascending order.
    The groups are consecutive runs of that order. When ``num_tasks`` does not divide the
    number of classes, the first groups get one class more (``np.array_split``). Each
    experience's test split contains the test images of its classes, and a warning is logged
    when some of them have none. For Fashion-MNIST the default gives 5 experiences of 2
    classes.

    Raises StreamError when ``num_tasks`` < 1, when there are more tasks than classes, when
    the splits use different label maps, or when a group has no test images.
    """
    return _split_classes(train, test, num_tasks, seed, task_labels=False)


def task_incremental(
    train: ImageArrays, test: ImageArrays, num_tasks: int = 5, seed: int | None = 0
) -> list[Experience]:
    """Split the classes as `class_incremental` does, with task label = experience index.

    Labels stay global: task 1 of Fashion-MNIST may hold labels 3 and 7, not 0 and 1.
    """
    return _split_classes(train, test, num_tasks, seed, task_labels=True)


def domain_incremental(
    train: ImageArrays,
    test: ImageArrays,
    shifts: Sequence[ImageShift | str],
    seed: int = 0,
    disjoint: bool = False,
) -> list[Experience]:
    """Build one experience per shift: the same label space under changing inputs, task label 0.

    A shift is an `ImageShift` or its string form (see `parse_shift`). A string shift that
    draws random numbers ("permuted", "noise:STD") gets the seed ``seed + index``, so two
    "permuted" entries give two different permutations.

    With ``disjoint=False`` every experience shifts all train and test images, as Permuted
    and Rotated MNIST do. With ``disjoint=True`` the train and the test split are each cut
    into one part per experience, stratified by class and drawn from ``seed``, so that no
    image appears at two sites.

    Raises StreamError for an empty shift list, an unknown shift, splits with different
    label maps, or an experience left without train or test images.
    """
    _check_same_label_map(train, test)
    seed = _check_seed(seed, allow_none=False)
    if len(shifts) == 0:
        raise StreamError(
            "domain_incremental got no shifts, expected one per experience, "
            'such as ["identity", "rotated:45"]'
        )
    resolved = [
        shift if isinstance(shift, ImageShift) else parse_shift(shift, seed + index)
        for index, shift in enumerate(shifts)
    ]

    num_tasks = len(resolved)
    if disjoint:
        generator = np.random.default_rng(seed)
        train_parts = _stratified_parts(train.labels, num_tasks, generator)
        test_parts = _stratified_parts(test.labels, num_tasks, generator)
    else:
        train_parts = [np.arange(len(train))] * num_tasks
        test_parts = [np.arange(len(test))] * num_tasks

    experiences = []
    for index, shift in enumerate(resolved):
        train_part = _shifted(train.subset(train_parts[index]), shift)
        test_part = _shifted(test.subset(test_parts[index]), shift)
        _check_not_empty(train_part, test_part, index, shift.name)
        classes = tuple(int(label) for label in np.unique(train_part.labels))
        experiences.append(Experience(index, 0, train_part, test_part, classes, shift.name))
    return experiences


def from_node_data(
    paths: Sequence[Path | str],
    class_names: Sequence[str] | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    task_labels: bool = False,
) -> list[Experience]:
    """Build the user's own stream: one image folder or ``.npz`` file per experience, in order.

    Each path is read with `fedgraft.data.node_data.load_node_data`, then split into train
    and test per class: round(n * test_fraction) of a class's n images go to test, but at
    least one stays in train. The split is drawn from ``np.random.default_rng(seed)``.
    Pass ``class_names`` (the global label map) whenever an experience may lack a class,
    because without it each image folder derives its label map from its own class folders.
    The task label is 0, or the experience index with ``task_labels=True``.

    Raises StreamError for an empty path list, a test_fraction outside (0, 1), label maps
    that differ between paths, or an experience without test images. Raises DataError
    (also a ValueError) when a path cannot be read.
    """
    if len(paths) == 0:
        raise StreamError("from_node_data got no paths, expected one folder or .npz file per experience")
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, numbers.Real) or not (
        0.0 < test_fraction < 1.0
    ):
        raise StreamError(
            f"test_fraction must be a number in (0, 1), got {test_fraction!r}. "
            "For example 0.2 keeps a fifth of each class for testing."
        )
    seed = _check_seed(seed, allow_none=False)
    generator = np.random.default_rng(seed)

    experiences = []
    label_map: tuple[str, ...] | None = None
    for index, path in enumerate(paths):
        data = load_node_data(path, class_names)
        if label_map is not None and data.class_names != label_map:
            raise StreamError(
                f"experience {index} ({path}) has the label map {list(data.class_names)}, but "
                f"experience 0 has {list(label_map)}. Pass class_names so that every "
                "experience uses the same global label map."
            )
        label_map = data.class_names

        train_indices, test_indices = _stratified_holdout(data.labels, test_fraction, generator)
        train_part = data.subset(train_indices)
        test_part = data.subset(test_indices)
        _check_not_empty(train_part, test_part, index, str(path))
        classes = tuple(int(label) for label in np.unique(train_part.labels))
        task_label = index if task_labels else 0
        experiences.append(Experience(index, task_label, train_part, test_part, classes, str(path)))
        logger.info(
            "Stream from node data: experience %d from %s, %d train and %d test images",
            index,
            path,
            len(train_part),
            len(test_part),
        )
    return experiences


@dataclass(frozen=True)
class StreamSpec:
    """Registry entry: a ready-made stream, built from Fashion-MNIST unless given other data."""

    # Name used by create_stream and, later, the command line.
    name: str
    # One-line summary for listings.
    description: str
    # Number of experiences when the caller gives none.
    default_num_tasks: int
    # Builds the experiences from (train, test, num_tasks, seed).
    builder: Callable[[ImageArrays, ImageArrays, int, int], list[Experience]]

    def build(
        self,
        train: ImageArrays | None = None,
        test: ImageArrays | None = None,
        num_tasks: int | None = None,
        seed: int = 0,
        data_dir: Path | str | None = None,
    ) -> list[Experience]:
        """Build the stream, loading Fashion-MNIST from ``data_dir`` for a split left as None."""
        if train is None:
            train = load_fashion_mnist("train", data_dir)
        if test is None:
            test = load_fashion_mnist("test", data_dir)
        tasks = self.default_num_tasks if num_tasks is None else num_tasks
        return self.builder(train, test, tasks, seed)


def _permuted_stream(train: ImageArrays, test: ImageArrays, num_tasks: int, seed: int) -> list[Experience]:
    _check_num_tasks(num_tasks)
    return domain_incremental(train, test, ["permuted"] * num_tasks, seed)


def _rotated_stream(train: ImageArrays, test: ImageArrays, num_tasks: int, seed: int) -> list[Experience]:
    # Angles spread evenly over [0, 180) degrees, starting with the unrotated images.
    _check_num_tasks(num_tasks)
    angles = [180.0 * index / num_tasks for index in range(num_tasks)]
    return domain_incremental(train, test, [f"rotated:{angle:g}" for angle in angles], seed)


def _sites_stream(train: ImageArrays, test: ImageArrays, num_tasks: int, seed: int) -> list[Experience]:
    _check_num_tasks(num_tasks)
    if num_tasks > len(SITE_SHIFTS):
        raise StreamError(
            f"shifted-sites-fmnist has {len(SITE_SHIFTS)} sites {list(SITE_SHIFTS)}, got "
            f"num_tasks={num_tasks}. Pass num_tasks <= {len(SITE_SHIFTS)}, or call "
            "domain_incremental with your own list of shifts."
        )
    return domain_incremental(train, test, SITE_SHIFTS[:num_tasks], seed, disjoint=True)


STREAMS: dict[str, StreamSpec] = {
    spec.name: spec
    for spec in (
        StreamSpec(
            "split-fmnist",
            "class-incremental Fashion-MNIST, 5 experiences of 2 classes in a seeded class order",
            5,
            class_incremental,
        ),
        StreamSpec(
            "split-fmnist-task",
            "task-incremental Fashion-MNIST: split-fmnist with task label = experience index",
            5,
            task_incremental,
        ),
        StreamSpec(
            "permuted-fmnist",
            "domain-incremental Fashion-MNIST, one seeded pixel permutation per experience",
            5,
            _permuted_stream,
        ),
        StreamSpec(
            "rotated-fmnist",
            "domain-incremental Fashion-MNIST, rotations spread evenly over [0, 180) degrees",
            5,
            _rotated_stream,
        ),
        StreamSpec(
            "shifted-sites-fmnist",
            "domain-incremental Fashion-MNIST, 4 sites with disjoint images: original, "
            "contrast 0.5, blur sigma 1, noise std 25",
            len(SITE_SHIFTS),
            _sites_stream,
        ),
    )
}


def create_stream(
    name: str,
    train: ImageArrays | None = None,
    test: ImageArrays | None = None,
    num_tasks: int | None = None,
    seed: int = 0,
    data_dir: Path | str | None = None,
) -> list[Experience]:
    """Build the registered stream ``name``. Raises StreamError listing the names when unknown."""
    spec = STREAMS.get(name)
    if spec is None:
        raise StreamError(f"unknown stream {name!r}: expected one of {', '.join(STREAMS)}")
    return spec.build(train, test, num_tasks, seed, data_dir)


def _split_classes(
    train: ImageArrays, test: ImageArrays, num_tasks: int, seed: int | None, task_labels: bool
) -> list[Experience]:
    _check_same_label_map(train, test)
    _check_num_tasks(num_tasks)
    seed = _check_seed(seed, allow_none=True)
    classes = np.unique(train.labels)
    if num_tasks > len(classes):
        raise StreamError(
            f"num_tasks={num_tasks} is more than the {len(classes)} classes in the training "
            f"split, so some experience would get no class. Pass num_tasks <= {len(classes)}."
        )

    order = classes if seed is None else np.random.default_rng(seed).permutation(classes)
    experiences = []
    for index, group in enumerate(np.array_split(order, num_tasks)):
        group_classes = tuple(sorted(int(label) for label in group))
        train_part = train.subset(np.flatnonzero(np.isin(train.labels, group_classes)))
        test_part = test.subset(np.flatnonzero(np.isin(test.labels, group_classes)))
        description = "classes " + ", ".join(
            f"{label} ({train.class_names[label]})" for label in group_classes
        )
        _check_not_empty(train_part, test_part, index, description)
        untested = sorted(set(group_classes) - set(np.unique(test_part.labels).tolist()))
        if untested:
            logger.warning(
                "Class split: experience %d has no test images of classes %s, so its test "
                "accuracy covers only the other classes",
                index,
                untested,
            )
        task_label = index if task_labels else 0
        experiences.append(Experience(index, task_label, train_part, test_part, group_classes, description))
    return experiences


def _stratified_parts(labels: np.ndarray, num_parts: int, generator: np.random.Generator) -> list[np.ndarray]:
    """Cut the indices of each class into ``num_parts`` shuffled near-equal parts, each returned sorted."""
    parts: list[list[np.ndarray]] = [[] for _ in range(num_parts)]
    for label in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == label))
        for part, chunk in zip(parts, np.array_split(members, num_parts)):
            part.append(chunk)
    return [np.sort(np.concatenate(part)) for part in parts]


def _stratified_holdout(
    labels: np.ndarray, test_fraction: float, generator: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Return sorted train and test indices with round(n * test_fraction) of each class in test."""
    train_indices, test_indices = [], []
    for label in np.unique(labels):
        members = generator.permutation(np.flatnonzero(labels == label))
        # At least one image of every class stays in train, so the class is learnable.
        num_test = min(int(round(len(members) * test_fraction)), len(members) - 1)
        test_indices.append(members[:num_test])
        train_indices.append(members[num_test:])
    return np.sort(np.concatenate(train_indices)), np.sort(np.concatenate(test_indices))


def _shifted(data: ImageArrays, shift: ImageShift) -> ImageArrays:
    return ImageArrays(images=shift(data.images), labels=data.labels, class_names=data.class_names)


def _check_same_label_map(train: ImageArrays, test: ImageArrays) -> None:
    if train.class_names != test.class_names:
        raise StreamError(
            f"train and test splits have different label maps: {list(train.class_names)} and "
            f"{list(test.class_names)}. Load both with the same class_names."
        )


def _check_num_tasks(num_tasks: int) -> None:
    if isinstance(num_tasks, bool) or not isinstance(num_tasks, numbers.Integral) or num_tasks < 1:
        raise StreamError(f"num_tasks must be an integer >= 1, got {num_tasks!r}")


def _check_seed(seed: int | None, allow_none: bool) -> int | None:
    if seed is None and allow_none:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        expected = "an integer >= 0 or None" if allow_none else "an integer >= 0"
        raise StreamError(f"seed must be {expected}, got {seed!r}")
    return int(seed)


def _check_not_empty(train: ImageArrays, test: ImageArrays, index: int, description: str) -> None:
    if len(train) == 0:
        raise StreamError(
            f"experience {index} ({description}) has no training images. "
            "Use fewer experiences or more data."
        )
    if len(test) == 0:
        raise StreamError(
            f"experience {index} ({description}) has no test images, so its accuracy is "
            "undefined. Give the test split images of every class, or use fewer experiences."
        )
