"""Input shifts for domain-incremental streams: the same classes under changing inputs.

Each shift maps a batch of uint8 images, (N, H, W) grey or (N, H, W, 3) RGB, to a uint8
batch of the same shape. Every shift is deterministic: the same input gives the same output
in every call and every process, so a stream built twice from the same seed is identical.

Two shifts come from the continual-learning literature. ``permuted_pixels`` applies one
fixed pixel permutation (Permuted MNIST) and ``rotated`` one fixed rotation (Rotated MNIST).
The other three imitate a new acquisition site, such as a new scanner or camera:
``contrast``, ``gaussian_blur`` and ``gaussian_noise``.

A shift can also be written as a string for a command line or a config file, parsed by
`parse_shift`: "identity", "permuted", "rotated:DEGREES", "contrast:FACTOR", "blur:SIGMA"
or "noise:STD".
"""

from __future__ import annotations

import hashlib
import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from fedgraft.continual.errors import StreamError

__all__ = [
    "SHIFT_NAMES",
    "ImageShift",
    "contrast",
    "gaussian_blur",
    "gaussian_noise",
    "identity",
    "parse_shift",
    "permuted_pixels",
    "rotated",
]

# Names accepted by parse_shift, in the order error messages list them.
SHIFT_NAMES = ("identity", "permuted", "rotated", "contrast", "blur", "noise")

_SPEC_FORMS = "identity, permuted, rotated:DEGREES, contrast:FACTOR, blur:SIGMA, noise:STD"


@dataclass(frozen=True)
class ImageShift:
    """A named, deterministic map from a uint8 image batch to a uint8 batch of the same shape."""

    # Short description shown in experience descriptions and logs, such as "rotated:45".
    name: str
    # The map itself. Callers go through __call__, which checks the input and the output.
    transform: Callable[[np.ndarray], np.ndarray]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Apply the shift to (N, H, W) or (N, H, W, 3) uint8 images."""
        _check_images(images, self.name)
        shifted = self.transform(images)
        if shifted.dtype != np.uint8 or shifted.shape != images.shape:
            raise StreamError(
                f"shift {self.name!r} returned dtype {shifted.dtype} and shape {shifted.shape}, "
                f"expected uint8 with the input shape {images.shape}. Fix the shift function."
            )
        return shifted


def identity() -> ImageShift:
    """Return the shift that leaves images unchanged, for an unshifted first experience."""
    return ImageShift("identity", lambda images: images.copy())


def permuted_pixels(seed: int) -> ImageShift:
    """Return a fixed pixel permutation drawn from ``seed``, as in Permuted MNIST.

    The permutation moves pixel positions and keeps the channels of a pixel together.
    It is drawn per image size from ``np.random.default_rng(seed)``, so one seed gives the
    same permutation for every batch of the same height and width.
    """
    seed = _check_seed(seed, "permuted_pixels")

    def permute(images: np.ndarray) -> np.ndarray:
        count, height, width = images.shape[:3]
        order = np.random.default_rng(seed).permutation(height * width)
        flat = images.reshape(count, height * width, *images.shape[3:])
        return np.ascontiguousarray(flat[:, order].reshape(images.shape))

    return ImageShift(f"permuted(seed={seed})", permute)


def rotated(degrees: float) -> ImageShift:
    """Return a rotation by ``degrees`` counter-clockwise about the centre, as in Rotated MNIST.

    Pillow rotates each image with bilinear interpolation and keeps its size, so corners
    leave the frame and the uncovered area is filled with black (0).
    """
    degrees = _check_number(degrees, "rotated", "degrees")

    def rotate(images: np.ndarray) -> np.ndarray:
        fill = 0 if images.ndim == 3 else (0, 0, 0)
        output = np.empty_like(images)
        for index, image in enumerate(images):
            turned = Image.fromarray(image).rotate(
                degrees, resample=Image.Resampling.BILINEAR, fillcolor=fill
            )
            output[index] = np.asarray(turned)
        return output

    return ImageShift(f"rotated:{degrees:g}", rotate)


def contrast(factor: float) -> ImageShift:
    """Return a contrast change by ``factor`` about each image's mean value.

    Each pixel becomes mean + factor * (pixel - mean), rounded and clipped to [0, 255],
    where mean is the image's mean over all pixels and channels. A factor below 1
    flattens the image, above 1 stretches it, and 1 leaves it unchanged.
    """
    factor = _check_number(factor, "contrast", "factor", minimum=0.0)

    def adjust(images: np.ndarray) -> np.ndarray:
        values = images.astype(np.float32)
        axes = tuple(range(1, images.ndim))
        mean = values.mean(axis=axes, keepdims=True)
        return _to_uint8(mean + factor * (values - mean))

    return ImageShift(f"contrast:{factor:g}", adjust)


def gaussian_blur(sigma: float) -> ImageShift:
    """Return a Gaussian blur with standard deviation ``sigma`` in pixels, such as a defocused lens.

    The kernel is the sampled Gaussian, cut at ceil(3 * sigma) pixels from the centre and
    normalised to sum 1. It runs along height, then width, and repeats the edge pixels
    beyond the border.
    """
    sigma = _check_number(sigma, "gaussian_blur", "sigma", minimum=0.0, inclusive=False)
    radius = max(1, math.ceil(3.0 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (offsets / sigma) ** 2)
    weights /= weights.sum()

    def blur(images: np.ndarray) -> np.ndarray:
        values = images.astype(np.float32)
        for axis in (1, 2):
            values = _convolve_axis(values, weights.astype(np.float32), radius, axis)
        return _to_uint8(values)

    return ImageShift(f"blur:{sigma:g}", blur)


def gaussian_noise(std: float, seed: int) -> ImageShift:
    """Return additive Gaussian noise with standard deviation ``std`` in grey levels (0-255).

    The result is rounded and clipped to [0, 255]. The noise is drawn from a generator
    seeded by ``seed`` and a SHA-256 digest of the input batch. A batch therefore always
    gets the same noise, while a train split and a test split get different noise.
    """
    std = _check_number(std, "gaussian_noise", "std", minimum=0.0)
    seed = _check_seed(seed, "gaussian_noise")

    def add_noise(images: np.ndarray) -> np.ndarray:
        digest = hashlib.sha256(str(images.shape).encode())
        digest.update(np.ascontiguousarray(images).data)
        content_key = int.from_bytes(digest.digest()[:8], "little")
        generator = np.random.default_rng([seed, content_key])
        noise = generator.normal(0.0, std, size=images.shape).astype(np.float32)
        return _to_uint8(images.astype(np.float32) + noise)

    return ImageShift(f"noise:{std:g}(seed={seed})", add_noise)


def parse_shift(spec: str, seed: int) -> ImageShift:
    """Build a shift from its string form, such as "rotated:45" or "permuted".

    ``seed`` seeds "permuted" and "noise" and is ignored by the others. Raises StreamError
    for an unknown name, a missing or extra value, or a value outside the shift's range.
    """
    if not isinstance(spec, str):
        raise StreamError(
            f"shift {spec!r} is a {type(spec).__name__}, expected an ImageShift or a string "
            f"of the form {_SPEC_FORMS}"
        )
    name, has_value, text = spec.partition(":")
    name = name.strip()
    if name not in SHIFT_NAMES:
        raise StreamError(f"unknown shift {spec!r}: expected one of {_SPEC_FORMS}")

    if name in ("identity", "permuted"):
        if has_value:
            raise StreamError(f"shift {spec!r} takes no value: write {name!r} alone")
        return identity() if name == "identity" else permuted_pixels(seed)

    if not text.strip():
        raise StreamError(f"shift {spec!r} needs a value: write it as {name}:VALUE, e.g. {name}:2")
    try:
        value = float(text)
    except ValueError:
        raise StreamError(
            f"shift {spec!r} has the value {text!r}, which is not a number"
        ) from None
    if name == "rotated":
        return rotated(value)
    if name == "contrast":
        return contrast(value)
    if name == "blur":
        return gaussian_blur(value)
    return gaussian_noise(value, seed)


def _convolve_axis(values: np.ndarray, weights: np.ndarray, radius: int, axis: int) -> np.ndarray:
    """Correlate ``values`` with the symmetric ``weights`` along one axis, repeating the edges."""
    padding = [(0, 0)] * values.ndim
    padding[axis] = (radius, radius)
    padded = np.pad(values, padding, mode="edge")

    size = values.shape[axis]
    output = np.zeros_like(values)
    for offset, weight in enumerate(weights):
        window = [slice(None)] * values.ndim
        window[axis] = slice(offset, offset + size)
        output += weight * padded[tuple(window)]
    return output


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _check_images(images: np.ndarray, shift_name: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        found = images.dtype if isinstance(images, np.ndarray) else type(images).__name__
        raise StreamError(f"shift {shift_name!r} expects a uint8 numpy array, got {found}")
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise StreamError(
            f"shift {shift_name!r} expects images of shape (N, H, W) or (N, H, W, 3), "
            f"got {images.shape}"
        )


def _check_seed(seed: int, function: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise StreamError(f"{function}: seed must be an integer >= 0, got {seed!r}")
    return int(seed)


def _check_number(
    value: float,
    function: str,
    parameter: str,
    minimum: float | None = None,
    inclusive: bool = True,
) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise StreamError(f"{function}: {parameter} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None:
        too_small = value < minimum if inclusive else value <= minimum
        if too_small:
            bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
            raise StreamError(f"{function}: {parameter} must be {bound}, got {value:g}")
    return value
