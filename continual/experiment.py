"""Run continual-learning experiments: build the stream and the model, train, measure R.

One experiment trains one strategy along one stream and returns a `ContinualResult`
with the accuracy matrix R, the untrained baseline b and the metrics of `summarize`.

The model is a `TransferModel` in feature-extraction mode: a frozen backbone and one
linear head with a row for every class of the global label map (10 for Fashion-MNIST).
A class-incremental stream therefore never grows the head. The rows of classes that no
experience has shown yet stay untrained until their experience arrives.

Two input kinds exist (`InputKind`):

- features: the strategy trains ``FeatureHead(model)`` on a `feature_benchmark`. The
  backbone runs once per split, and its output is read from the `FeatureCache` in later
  runs. A replay buffer stores feature rows.
- images: the strategy trains the whole `TransferModel` on an `image_benchmark`, so the
  frozen backbone runs on every mini-batch, and a replay buffer stores images.
  "latent-replay" always uses features, so that a comparison can set image replay
  against latent replay.

`run_comparison` runs several strategies on one stream and seed. They share the stream,
the backbone and one benchmark per input kind, and each starts from the same seeded head.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np
from avalanche.benchmarks import CLScenario
from avalanche.training.determinism.rng_manager import RNGManager

from fedgraft.continual.avalanche_adapter import FeatureHead, feature_benchmark, image_benchmark
from fedgraft.continual.metrics import ContinualSummary, summarize
from fedgraft.continual.run_config import ContinualConfig, InputKind
from fedgraft.continual.runner import run_stream, untrained_baseline
from fedgraft.continual.strategies import create_strategy
from fedgraft.continual.streams import Experience, create_stream
from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.data.feature_cache import FeatureCache
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.models.head import create_head
from fedgraft.models.registry import Backbone, create_backbone
from fedgraft.models.state import state_dict_sha256
from fedgraft.models.transfer import TrainingMode, TransferModel

__all__ = [
    "ContinualResult",
    "PreparedStream",
    "ProgressCallback",
    "ProgressUpdate",
    "Stage",
    "balanced_subset",
    "build_stream",
    "prepare",
    "run_comparison",
    "run_experiment",
]

logger = logging.getLogger(__name__)


class Stage(str, Enum):
    """Part of an experiment that a `ProgressUpdate` reports on."""

    # The frozen backbone runs over every split, or the feature cache is read. Counts images.
    FEATURES = "features"
    # A strategy trains along the stream. Counts experiences.
    TRAINING = "training"


@dataclass(frozen=True)
class ProgressUpdate:
    """How far one stage of an experiment has come."""

    stage: Stage
    # Strategy being trained, or None in the FEATURES stage.
    strategy: str | None
    # Images (FEATURES) or experiences (TRAINING) done so far.
    done: int
    # Images or experiences in all.
    total: int


ProgressCallback = Callable[[ProgressUpdate], None]


@dataclass(frozen=True)
class ContinualResult:
    """Outcome of training one strategy along one stream."""

    strategy: str
    # Input the strategy trained on. latent-replay is always FEATURES.
    input_kind: InputKind
    # R, shape (T, T): R[i, j] is the accuracy on test experience j after training on
    # experiences 0..i, as a fraction in [0, 1].
    matrix: np.ndarray
    # b, shape (T,): the accuracy of the untrained head on each test experience.
    baseline: np.ndarray
    # ACC, BWT, FWT and forgetting of R and b.
    summary: ContinualSummary
    # Description of each experience, such as "classes 3 (Dress), 7 (Sneaker)".
    task_descriptions: tuple[str, ...]
    # Wall time of run_stream: training on every experience and filling R, in seconds.
    stream_seconds: float
    # Wall time of building the benchmark this strategy trained on, in seconds: the
    # backbone's pass over every split (or the cache reads) for features, wrapping the
    # images for images. Strategies of the same input kind share one benchmark, so they
    # report the same value.
    benchmark_seconds: float


def balanced_subset(labels: np.ndarray, cap: int, generator: np.random.Generator) -> np.ndarray:
    """Return sorted indices of at most ``cap`` items, as equal per class as the counts allow.

    Each class's indices are shuffled with ``generator``, and the classes then take turns
    in ascending label order: first one item of every class, then a second, and so on.
    A class with few items drops out when it runs out. All indices are returned when
    ``cap`` >= len(labels).
    """
    if cap >= len(labels):
        return np.arange(len(labels))
    shuffled = [generator.permutation(np.flatnonzero(labels == label)) for label in np.unique(labels)]
    longest = max(len(members) for members in shuffled)
    picked: list[int] = []
    for position in range(longest):
        picked.extend(int(members[position]) for members in shuffled if position < len(members))
        if len(picked) >= cap:
            break
    return np.sort(np.array(picked[:cap], dtype=np.int64))


def build_stream(cfg: ContinualConfig) -> list[Experience]:
    """Load Fashion-MNIST from ``cfg.data_dir`` and build the stream with the per-task caps.

    With a cap, each class of the source split keeps at most ``cap`` images before the
    stream is built. That leaves every experience at least ``cap`` images when the stream
    has at most 10 tasks or uses every image in every task. Each experience is then cut to
    ``cap`` images with `balanced_subset`. Raises DataError when the files cannot
    be read and StreamError when the stream cannot be built.
    """
    generator = np.random.default_rng(cfg.seed)
    train = load_fashion_mnist("train", cfg.data_dir)
    test = load_fashion_mnist("test", cfg.data_dir)
    if cfg.train_samples_per_task:
        train = _cap_per_class(train, cfg.train_samples_per_task, generator)
    if cfg.test_samples_per_task:
        test = _cap_per_class(test, cfg.test_samples_per_task, generator)

    experiences = create_stream(cfg.stream, train, test, cfg.num_tasks, cfg.seed)
    capped = []
    for experience in experiences:
        train_part, test_part = experience.train, experience.test
        if cfg.train_samples_per_task:
            train_part = train_part.subset(
                balanced_subset(train_part.labels, cfg.train_samples_per_task, generator)
            )
        if cfg.test_samples_per_task:
            test_part = test_part.subset(
                balanced_subset(test_part.labels, cfg.test_samples_per_task, generator)
            )
        capped.append(dataclasses.replace(experience, train=train_part, test=test_part))
        logger.info(
            "Continual stream %s: experience %d (%s), %d train and %d test images",
            cfg.stream,
            experience.index,
            experience.description,
            len(train_part),
            len(test_part),
        )
    return capped


def _cap_per_class(data: ImageArrays, per_class: int, generator: np.random.Generator) -> ImageArrays:
    """Keep a seeded random subset of at most ``per_class`` images of each class."""
    per_class_indices = [
        generator.permutation(np.flatnonzero(data.labels == label))[:per_class]
        for label in np.unique(data.labels)
    ]
    return data.subset(np.sort(np.concatenate(per_class_indices)))


class PreparedStream:
    """The stream, the backbone and the benchmarks, shared by the strategies of one comparison."""

    def __init__(self, cfg: ContinualConfig, experiences: list[Experience], backbone: Backbone) -> None:
        self.cfg = cfg
        self.experiences = experiences
        self.backbone = backbone
        self.num_classes = len(experiences[0].train.class_names)
        # Cache key of the backbone, and the reference for the after-run check that no
        # strategy changed the frozen weights or BatchNorm statistics.
        self.backbone_sha256 = state_dict_sha256(backbone.state_dict())
        self._benchmarks: dict[InputKind, tuple[CLScenario, float]] = {}

    def transfer_model(self) -> TransferModel:
        """Build a transfer model on the shared backbone, with a new head from torch's RNG."""
        head = create_head("linear", self.backbone.num_features, self.num_classes)
        return TransferModel(self.backbone, head, TrainingMode.FEATURE_EXTRACTION)

    def benchmark(
        self, kind: InputKind, progress: ProgressCallback | None = None
    ) -> tuple[CLScenario, float]:
        """Return the benchmark of ``kind`` and the seconds it took to build, building it once."""
        if kind not in self._benchmarks:
            started = time.perf_counter()
            if kind is InputKind.FEATURES:
                benchmark = self._feature_benchmark(progress)
            else:
                benchmark = image_benchmark(
                    self.experiences,
                    self.cfg.image_size,
                    self.backbone.input_mean,
                    self.backbone.input_std,
                    preprocess_on_load=True,
                )
            self._benchmarks[kind] = (benchmark, time.perf_counter() - started)
        return self._benchmarks[kind]

    def _feature_benchmark(self, progress: ProgressCallback | None) -> CLScenario:
        cache = FeatureCache(self.cfg.cache_dir)

        def report(done: int, total: int) -> None:
            if progress is not None:
                progress(ProgressUpdate(Stage.FEATURES, None, done, total))

        benchmark = feature_benchmark(
            self.experiences,
            self.transfer_model(),
            self.cfg.image_size,
            cache=cache,
            backbone_sha256=self.backbone_sha256,
            progress=report,
        )
        logger.info(
            "Continual features: %d splits read from the cache, %d computed by %s",
            cache.hits,
            cache.misses,
            self.backbone.name,
        )
        return benchmark

    def check_backbone_unchanged(self, strategy: str) -> None:
        """Raise RuntimeError when the frozen backbone's state differs from the start."""
        if state_dict_sha256(self.backbone.state_dict()) != self.backbone_sha256:
            raise RuntimeError(
                f"strategy {strategy!r} changed the frozen backbone {self.backbone.name} "
                "(its weights or BatchNorm statistics), so its features and every later "
                "strategy's results would be wrong"
            )


def prepare(cfg: ContinualConfig) -> PreparedStream:
    """Build the stream and the backbone of ``cfg``, which must be validated.

    Raises DataError, StreamError or ModelError (all ValueErrors) when the data, the
    stream or the backbone cannot be built.
    """
    experiences = build_stream(cfg)
    backbone = create_backbone(cfg.backbone, cfg.weights)
    return PreparedStream(cfg, experiences, backbone)


def run_experiment(
    cfg: ContinualConfig,
    strategy_name: str,
    progress: ProgressCallback | None = None,
    prepared: PreparedStream | None = None,
) -> ContinualResult:
    """Train ``strategy_name`` along the stream of ``cfg`` and measure R, b and the metrics.

    ``prepared`` lets several strategies share one stream, backbone and benchmark. Without
    it, ``cfg`` is validated and prepared here. The global RNGs of torch, NumPy and
    Python are seeded with ``cfg.seed`` before the head is built, so every strategy
    starts from the same head and the same shuffling state. Raises RuntimeError when the
    strategy changed the frozen backbone.
    """
    if prepared is None:
        prepared = prepare(cfg.validate())
    kind = cfg.input_kind_of(strategy_name)
    if strategy_name == "replay" and kind is InputKind.FEATURES:
        logger.warning(
            "Continual run: replay on input kind features stores feature rows, as "
            "latent-replay does. Pass --input-kind images to replay images."
        )
    benchmark, benchmark_seconds = prepared.benchmark(kind, progress)

    RNGManager.set_random_seeds(cfg.seed)
    transfer = prepared.transfer_model()
    model = FeatureHead(transfer) if kind is InputKind.FEATURES else transfer
    settings = cfg.settings_for(strategy_name)
    strategy = create_strategy(strategy_name, model, settings)
    baseline = untrained_baseline(model, benchmark, batch_size=settings.eval_batch_size)

    num_tasks = len(prepared.experiences)

    def report(done: int) -> None:
        if progress is not None:
            progress(ProgressUpdate(Stage.TRAINING, strategy_name, done, num_tasks))

    report(0)
    started = time.perf_counter()
    matrix = run_stream(strategy, benchmark, on_step=lambda step, row: report(step + 1))
    stream_seconds = time.perf_counter() - started
    prepared.check_backbone_unchanged(strategy_name)
    logger.info(
        "Continual run: %s on %s (%s) took %.1f s, average accuracy %.3f",
        strategy_name,
        cfg.stream,
        kind.value,
        stream_seconds,
        float(matrix[-1].mean()),
    )

    return ContinualResult(
        strategy=strategy_name,
        input_kind=kind,
        matrix=matrix,
        baseline=baseline,
        summary=summarize(matrix, baseline),
        task_descriptions=tuple(e.description for e in prepared.experiences),
        stream_seconds=stream_seconds,
        benchmark_seconds=benchmark_seconds,
    )


def run_comparison(
    cfg: ContinualConfig, progress: ProgressCallback | None = None
) -> list[ContinualResult]:
    """Run every strategy of ``cfg.strategies`` on one shared stream, in the order given."""
    prepared = prepare(cfg.validate())
    return [run_experiment(cfg, name, progress, prepared) for name in cfg.strategies]
