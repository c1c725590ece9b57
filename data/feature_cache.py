"""On-disk cache of the frozen part's output, so a frozen backbone runs once per dataset.

A cache entry is keyed by the backbone's SHA-256, the data's fingerprint and the
preprocessing (image size, normalisation, where the frozen part ends). Changing any of
the three gives a new key, so stale features are never read. Entries are written
atomically: a crash leaves either the complete file or none.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from fedgraft.data.image_arrays import ImageArrays
from fedgraft.models.preprocess import preprocess_images
from fedgraft.models.state import load_state_file, save_state_file
from fedgraft.models.transfer import TransferModel

__all__ = ["FeatureCache", "Preprocessing", "extract_features", "progress_logger"]

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]  # (images done, images in all)


def progress_logger(label: str, every_seconds: float = 5.0, width: int = 24) -> ProgressCallback:
    """Return a callback that logs a text progress bar at most every `every_seconds`.

    Flower streams a run's logs as text lines, so the bar is a line, not a live widget.
    """
    last_logged = [float("-inf")]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - last_logged[0] < every_seconds:
            return
        last_logged[0] = now
        filled = width * done // max(total, 1)
        logger.info("%s [%s%s] %d/%d images", label, "#" * filled, "-" * (width - filled), done, total)

    return progress


@dataclass(frozen=True)
class Preprocessing:
    """Everything between raw pixels and the trainable part that changes the features."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    split: int  # index of the first trainable backbone block

    @classmethod
    def of(cls, model: TransferModel, image_size: int) -> Preprocessing:
        backbone = model.backbone
        return cls(image_size, tuple(backbone.input_mean), tuple(backbone.input_std), model.split)


def extract_features(
    model: TransferModel,
    data: ImageArrays,
    image_size: int,
    batch_size: int = 256,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """Run the frozen part of `model` over `data`; returns one row per image, in order."""
    backbone = model.backbone
    chunks = []
    total = len(data)
    for start in range(0, total, batch_size):
        batch = preprocess_images(
            data.images[start:start + batch_size], image_size, backbone.input_mean, backbone.input_std
        )
        chunks.append(model.frozen_features(batch))
        if progress is not None:
            progress(min(start + batch_size, total), total)
    if not chunks:
        return torch.empty(0)
    return torch.cat(chunks)


class FeatureCache:
    """A folder of cached feature tensors, one safetensors file per key."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).expanduser() / "features"
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(backbone_sha256: str, data_fingerprint: str, preprocessing: Preprocessing) -> str:
        """Return the cache key of one (backbone, data, preprocessing) triple."""
        payload = json.dumps(
            {"backbone": backbone_sha256, "data": data_fingerprint, "pre": preprocessing.__dict__},
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def get_or_compute(self, key: str, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Return the features stored under `key`, computing and storing them on a miss."""
        path = self.path(key)
        if path.exists():
            try:
                features = load_state_file(path)["features"]
            except (SafetensorError, KeyError, OSError) as err:
                # A damaged entry is recomputed, never trusted.
                logger.warning("feature cache entry %s is unreadable (%s); recomputing it", path, err)
            else:
                self.hits += 1
                return features
        self.misses += 1
        features = compute()
        save_state_file({"features": features}, path)
        return features

    def features_for(
        self,
        model: TransferModel,
        backbone_sha256: str,
        data: ImageArrays,
        image_size: int,
        progress: ProgressCallback | None = None,
    ) -> torch.Tensor:
        """Return the frozen part's output for `data`, from the cache when it is there."""
        key = self.key(backbone_sha256, data.fingerprint(), Preprocessing.of(model, image_size))
        return self.get_or_compute(key, lambda: extract_features(model, data, image_size, progress=progress))
