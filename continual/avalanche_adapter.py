"""Avalanche benchmarks built from fedgraft task streams, on images or on cached features.

Two input kinds are supported:

- `image_benchmark`: images preprocessed for the backbone, (N, 3, S, S) float32 tensors, for
  a model that runs the whole `TransferModel`. With ``preprocess_on_load=True`` the
  experiences keep the uint8 images and each item is preprocessed when it is read;
- `feature_benchmark`: the frozen part's output, read from a `FeatureCache` or computed, for
  the head-only `FeatureHead`. Training then never runs the frozen part, and a replay
  buffer on this benchmark stores feature tensors, never images.

Choice of Avalanche API (checked in avalanche-lib 0.6.0): every experience becomes a
``TaskAwareSupervisedClassificationDataset`` over a ``TensorDataset``, with a "targets"
``DataAttribute`` and a ``TaskLabels`` attribute. Items are (input, label, task label)
triplets, which EWC, GEM and A-GEM unpack as ``batch[-1]`` for the task label. The list
of datasets goes through ``benchmark_from_datasets``, so the experience order and the class
split stay exactly those of the stream, with the test stream aligned index by index.
``with_task_labels`` then sets ``experience.task_label``, and ``with_classes_timeline``
sets ``classes_in_this_experience``, which Avalanche's dynamic heads read.

Datasets without task labels, as ``make_avalanche_dataset`` or ``as_classification_dataset``
build them, make LwF fail in 0.6 with ``AttributeError: ... 'targets_task_labels'``, because
``LearningWithoutForgetting.post_adapt`` reads that field. ``class_incremental_benchmark``
fails the same way when given such datasets, and it draws its own class split, so it is
not used here.
``dataset_benchmark`` and ``tensors_benchmark`` live in
``avalanche.benchmarks.scenarios.deprecated`` in 0.6.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks import CLScenario, benchmark_from_datasets
from avalanche.benchmarks.scenarios.supervised import with_classes_timeline
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import (
    DataAttribute,
    TaskAwareSupervisedClassificationDataset,
    TaskLabels,
)
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from fedgraft.continual.errors import StreamError
from fedgraft.continual.streams import Experience
from fedgraft.data.feature_cache import FeatureCache, extract_features
from fedgraft.models.preprocess import preprocess_images
from fedgraft.models.state import state_dict_sha256
from fedgraft.models.transfer import TrainingMode, TransferModel

__all__ = [
    "FeatureHead",
    "FeatureProgress",
    "PreprocessedImages",
    "benchmark_from_tensors",
    "feature_benchmark",
    "image_benchmark",
    "make_dataset",
]

logger = logging.getLogger(__name__)


class FeatureHead(nn.Module):
    """The trainable part of a `TransferModel`, taking the frozen part's output as input.

    It shares its modules with the transfer model: the trainable backbone blocks (none in
    feature-extraction mode) and the head. Training a FeatureHead therefore trains
    the transfer model in place, unless a strategy swaps in a copy (GDumb does, so read
    ``strategy.model`` after training). Its parameters are exactly the trainable ones, so
    EWC, SI, GEM and A-GEM never see frozen weights.
    """

    def __init__(self, model: TransferModel) -> None:
        super().__init__()
        self.trainable_blocks = nn.ModuleList(model.backbone.blocks[model.split :])
        self.head = model.head
        # Number of frozen backbone blocks before the input. 0 (full mode) means the
        # input is the preprocessed image itself.
        self.frozen_block_count = model.split
        # Outside feature-extraction mode the frozen part returns a feature map, which the
        # trainable blocks consume and which is pooled before the head.
        self.needs_pooling = model.mode is not TrainingMode.FEATURE_EXTRACTION

    def forward(self, features: Tensor) -> Tensor:
        """Return (N, num_classes) logits for the frozen part's output of N images."""
        return self.head(self.head_input(features))

    def head_input(self, features: Tensor) -> Tensor:
        """Run the trainable blocks and the pooling: (N, num_features) inputs of the head."""
        x = features
        for block in self.trainable_blocks:
            x = block(x)
        if self.needs_pooling:
            # The same global average pooling as Backbone.pool: (N, C, h, w) to (N, C).
            x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x


# Called with (images done, images in all) while features are computed or read.
FeatureProgress = Callable[[int, int], None]


class PreprocessedImages(Dataset):
    """Images kept as uint8 and preprocessed for the backbone one item at a time.

    Item i is ``(preprocess_images(images[i:i+1], ...)[0], labels[i])``, the same
    (3, image_size, image_size) tensor that `preprocess_images` returns for the whole
    array, but memory contains only the uint8 images: 784 bytes per 28 x 28 image instead
    of 3 * image_size**2 * 4 bytes.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Tensor,
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        self.images = images
        self.labels = labels
        self.image_size = image_size
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image = preprocess_images(self.images[index : index + 1], self.image_size, self.mean, self.std)
        return image[0], self.labels[index]


def make_dataset(
    inputs: Tensor | Dataset, labels: Tensor | np.ndarray, task_label: int
) -> TaskAwareSupervisedClassificationDataset:
    """Wrap one experience's inputs and labels into an Avalanche dataset with task labels.

    ``inputs`` is a tensor with one row per label, or a dataset whose items are already
    (input, label) pairs in the order of ``labels``, such as `PreprocessedImages`.
    Items are (input, label, task_label) triplets. ``dataset.targets`` contains the labels
    and ``dataset.targets_task_labels`` contains ``task_label`` once per item.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    if labels.ndim != 1 or len(labels) != len(inputs):
        raise StreamError(
            f"make_dataset expects one label per input: got {len(inputs)} inputs and labels "
            f"of shape {tuple(labels.shape)}"
        )
    pairs = TensorDataset(inputs, labels) if isinstance(inputs, Tensor) else inputs
    return TaskAwareSupervisedClassificationDataset(
        [pairs],
        data_attributes=[
            DataAttribute(labels.tolist(), "targets"),
            TaskLabels([int(task_label)] * len(labels)),
        ],
    )


def benchmark_from_tensors(
    train: Sequence[tuple[Tensor | Dataset, Tensor]],
    test: Sequence[tuple[Tensor | Dataset, Tensor]],
    task_labels: Sequence[int],
) -> CLScenario:
    """Build a benchmark whose experience i trains on ``train[i]`` and tests on ``test[i]``.

    Each element is an (inputs, labels) pair, with inputs as `make_dataset` takes them. The benchmark has ``train_stream`` and
    ``test_stream`` of equal length, in the given order, with experience i carrying
    ``task_labels[i]``.
    """
    if not (len(train) == len(test) == len(task_labels)) or len(train) == 0:
        raise StreamError(
            f"benchmark_from_tensors needs the same non-zero number of train sets, test sets "
            f"and task labels, got {len(train)}, {len(test)} and {len(task_labels)}"
        )
    train_sets = [make_dataset(x, y, t) for (x, y), t in zip(train, task_labels)]
    test_sets = [make_dataset(x, y, t) for (x, y), t in zip(test, task_labels)]
    benchmark = benchmark_from_datasets(train=train_sets, test=test_sets)
    return with_classes_timeline(with_task_labels(benchmark))


def image_benchmark(
    experiences: Sequence[Experience],
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    preprocess_on_load: bool = False,
) -> CLScenario:
    """Build a benchmark of preprocessed images, (3, image_size, image_size) per item.

    ``mean`` and ``std`` are the backbone's ``input_mean`` and ``input_std``. By default all
    images are converted up front, which takes N * 3 * image_size**2 * 4 bytes per split.
    With ``preprocess_on_load=True`` each split is a `PreprocessedImages`, which converts
    an item every time it is read: the same tensors, at the cost of converting again in
    every epoch and every evaluation.
    """
    _check_experiences(experiences)
    train, test = [], []
    for experience in experiences:
        for split, target in ((experience.train, train), (experience.test, test)):
            labels = torch.from_numpy(split.labels)
            if preprocess_on_load:
                inputs = PreprocessedImages(split.images, labels, image_size, mean, std)
            else:
                inputs = preprocess_images(split.images, image_size, mean, std)
            target.append((inputs, labels))
    return benchmark_from_tensors(train, test, [e.task_label for e in experiences])


def feature_benchmark(
    experiences: Sequence[Experience],
    model: TransferModel,
    image_size: int,
    cache: FeatureCache | None = None,
    backbone_sha256: str | None = None,
    progress: FeatureProgress | None = None,
) -> CLScenario:
    """Build a benchmark of frozen-part outputs of ``model``, to train ``FeatureHead(model)`` on.

    With ``cache`` each split's features are read from it, or computed once and stored.
    ``backbone_sha256`` is the cache key of the backbone and defaults to the SHA-256 of
    ``model.backbone``'s state dict. Without ``cache`` the features are computed every call.
    ``progress`` receives (images done, images in all) over every split of the stream,
    during the backbone's passes and after each split.
    """
    _check_experiences(experiences)
    if cache is not None and backbone_sha256 is None:
        backbone_sha256 = state_dict_sha256(model.backbone.state_dict())

    total = sum(len(e.train) + len(e.test) for e in experiences)
    finished = 0
    train, test = [], []
    for experience in experiences:
        for split, target in ((experience.train, train), (experience.test, test)):
            split_progress = _offset_progress(progress, finished, total)
            if cache is None:
                features = extract_features(model, split, image_size, progress=split_progress)
            else:
                features = cache.features_for(
                    model, backbone_sha256, split, image_size, progress=split_progress
                )
            target.append((features, torch.from_numpy(split.labels)))
            finished += len(split)
            if progress is not None:
                progress(finished, total)
        logger.debug(
            "Feature benchmark: experience %d, %d train and %d test feature rows",
            experience.index,
            len(experience.train),
            len(experience.test),
        )
    return benchmark_from_tensors(train, test, [e.task_label for e in experiences])


def _offset_progress(progress: FeatureProgress | None, offset: int, total: int) -> FeatureProgress | None:
    """Turn one split's (done, split size) into (offset + done, total) for the whole stream."""
    if progress is None:
        return None
    return lambda done, _split_total: progress(offset + done, total)


def _check_experiences(experiences: Sequence[Experience]) -> None:
    if len(experiences) == 0:
        raise StreamError("the stream has no experiences, expected at least one")
    for position, experience in enumerate(experiences):
        if not isinstance(experience, Experience):
            raise StreamError(
                f"stream element {position} is a {type(experience).__name__}, expected an "
                "Experience from fedgraft.continual.streams"
            )
        if experience.index != position:
            raise StreamError(
                f"stream element {position} has index {experience.index}. Experiences must "
                "be in stream order with indices 0, 1, 2, ..."
            )
        if len(experience.train) == 0 or len(experience.test) == 0:
            raise StreamError(
                f"experience {position} has {len(experience.train)} train and "
                f"{len(experience.test)} test images, expected at least one of each"
            )
