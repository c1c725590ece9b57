"""In-memory image dataset shared by every loader: uint8 images, int64 labels and the label map."""

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from fedgraft.data.errors import DataError

__all__ = ["ImageArrays"]


@dataclass(frozen=True)
class ImageArrays:
    """Images with their labels and the global label map.

    The constructor raises DataError when the arrays disagree with each other or with the
    label map, so every ImageArrays that exists is consistent.
    """

    # uint8, (N, H, W) for grey or (N, H, W, 3) for RGB images
    images: np.ndarray
    # int64, (N,), indices into class_names
    labels: np.ndarray
    # the global label map: class_names[label] is the name of a label
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        images = self.images
        labels = self.labels
        if images.dtype != np.uint8:
            raise DataError(f"ImageArrays.images must have dtype uint8, got {images.dtype}.")
        is_grey = images.ndim == 3
        is_rgb = images.ndim == 4 and images.shape[-1] == 3
        if not (is_grey or is_rgb):
            raise DataError(
                f"ImageArrays.images must have shape (N, H, W) or (N, H, W, 3), got {images.shape}."
            )
        if labels.dtype != np.int64 or labels.ndim != 1:
            raise DataError(
                f"ImageArrays.labels must be a 1-D int64 array, got dtype {labels.dtype} "
                f"and shape {labels.shape}."
            )
        if len(labels) != len(images):
            raise DataError(
                f"ImageArrays has {len(images)} images but {len(labels)} labels. "
                "Each image needs exactly one label."
            )
        if not isinstance(self.class_names, tuple) or not all(
            isinstance(name, str) for name in self.class_names
        ):
            raise DataError(
                f"ImageArrays.class_names must be a tuple of str, got {self.class_names!r}."
            )
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(
                f"ImageArrays.class_names must be unique, got {list(self.class_names)}."
            )
        if len(labels) > 0 and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            raise DataError(
                f"ImageArrays.labels must lie in [0, {len(self.class_names) - 1}] because there "
                f"are {len(self.class_names)} class names, got labels from {labels.min()} "
                f"to {labels.max()}."
            )

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray) -> "ImageArrays":
        """Copy the samples at ``indices`` into a new ImageArrays with the same label map."""
        indices = np.asarray(indices)
        if indices.ndim != 1 or not (np.issubdtype(indices.dtype, np.integer) or indices.size == 0):
            raise DataError(
                f"ImageArrays.subset expects a 1-D integer index array, got dtype {indices.dtype} "
                f"and shape {indices.shape}."
            )
        indices = indices.astype(np.int64, copy=False)
        if indices.size > 0 and (indices.min() < 0 or indices.max() >= len(self)):
            raise DataError(
                f"ImageArrays.subset indices must lie in [0, {len(self) - 1}], got indices from "
                f"{indices.min()} to {indices.max()}."
            )
        return ImageArrays(
            images=self.images[indices], labels=self.labels[indices], class_names=self.class_names
        )

    def fingerprint(self) -> str:
        """Hash the images, labels and class names into a sha256 hex digest.

        The digest covers shape, dtype and bytes of both arrays, so it changes when a single
        pixel or label changes. The feature cache uses it as a key.
        """
        digest = hashlib.sha256()

        # A JSON header with a length prefix keeps the byte stream unambiguous, so two
        # different datasets never produce the same sequence of hashed bytes.
        header = json.dumps(
            {
                "images": [list(self.images.shape), self.images.dtype.str],
                "labels": [list(self.labels.shape), self.labels.dtype.str],
                "class_names": list(self.class_names),
            },
            sort_keys=True,
        ).encode("utf-8")
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header)

        digest.update(np.ascontiguousarray(self.images).data)
        digest.update(np.ascontiguousarray(self.labels).data)
        return digest.hexdigest()
