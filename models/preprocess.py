"""Conversion of uint8 image arrays into normalised backbone inputs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["MAX_IMAGE_SIZE", "MIN_IMAGE_SIZE", "preprocess_images"]

MIN_IMAGE_SIZE = 16  # px. VGG-16 needs at least 32 because it halves the size five times.
MAX_IMAGE_SIZE = 1024  # px

# Images converted per step. Each step's float intermediates take about
# chunk * 3 * max(H*W, S*S) * 4 bytes, on top of the output tensor.
_CHUNK_SIZE = 512


def _check_channel_values(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    if len(values) != 3:
        raise ValueError(f"{name} needs one value per RGB channel, got {len(values)} values")
    return float(values[0]), float(values[1]), float(values[2])


def preprocess_images(
    images: np.ndarray,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> torch.Tensor:
    """Convert uint8 images into a normalised float32 batch of shape (N, 3, S, S).

    `images` is (N, H, W) or (N, H, W, 1) greyscale, or (N, H, W, 3) RGB. Pixels are
    scaled to [0, 1], greyscale is repeated to 3 channels, each image is resized to
    S = `image_size` with bilinear interpolation and antialiasing (the aspect ratio is
    not kept), and channel c becomes (x - mean[c]) / std[c].

    The work runs in chunks, so only the output tensor grows with N. That tensor takes
    N * 3 * S * S * 4 bytes, so call this per batch when N and S are both large.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise ValueError(f"images must be a uint8 numpy array, got {found}")
    grey = images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 1)
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if not (grey or rgb):
        raise ValueError(
            f"images must have shape (N, H, W) or (N, H, W, 1) for greyscale or "
            f"(N, H, W, 3) for RGB, got {images.shape}"
        )
    if isinstance(image_size, bool) or not isinstance(image_size, int | np.integer):
        raise ValueError(f"image_size must be an integer, got {image_size!r}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ValueError(
            f"image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} px, "
            f"got {image_size}"
        )
    mean_values = _check_channel_values("mean", mean)
    std_values = _check_channel_values("std", std)
    if min(std_values) <= 0:
        raise ValueError(f"std values must be > 0, got {std_values}")

    size = int(image_size)
    count = images.shape[0]
    output = torch.empty((count, 3, size, size), dtype=torch.float32)
    mean_tensor = torch.tensor(mean_values, dtype=torch.float32).view(1, 3, 1, 1)
    std_tensor = torch.tensor(std_values, dtype=torch.float32).view(1, 3, 1, 1)

    for start in range(0, count, _CHUNK_SIZE):
        stop = min(start + _CHUNK_SIZE, count)
        # Copy, because torch.from_numpy rejects negative strides (flipped arrays).
        chunk = torch.from_numpy(np.ascontiguousarray(images[start:stop]))
        chunk = chunk.to(torch.float32).div_(255.0)

        # To (n, C, H, W). Greyscale is resized as one channel and repeated afterwards,
        # which gives the same result as resizing three equal channels.
        if grey:
            chunk = chunk.reshape(chunk.shape[0], 1, chunk.shape[1], chunk.shape[2])
        else:
            chunk = chunk.permute(0, 3, 1, 2)
        if chunk.shape[-2:] != (size, size):
            chunk = F.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        if grey:
            chunk = chunk.expand(-1, 3, -1, -1)

        output[start:stop] = (chunk - mean_tensor) / std_tensor
    return output
