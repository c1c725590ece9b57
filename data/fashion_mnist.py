"""Fashion-MNIST from the gzipped idx files of Zalando's release.

The Debian package dataset-fashion-mnist installs the four files into FASHION_MNIST_DIR.
``load_fashion_mnist`` also reads the un-gzipped files and torchvision's
``DIR/FashionMNIST/raw/`` layout, so a folder filled by ``download_fashion_mnist`` works too.
"""

import gzip
import logging
import zlib
from pathlib import Path

import numpy as np

from fedgraft.data.errors import DataError
from fedgraft.data.image_arrays import ImageArrays

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "download_fashion_mnist",
    "load_fashion_mnist",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# The official label map of the Fashion-MNIST release, in label order.
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# File name prefix of each split in the release.
_SPLIT_PREFIXES = {"train": "train", "test": "t10k"}

# idx magic numbers: 0x0803 is uint8 data with 3 dimensions, 0x0801 uint8 data with 1.
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049
_IMAGES_HEADER_BYTES = 16
_LABELS_HEADER_BYTES = 8

_FIX_HINT = (
    "Install the files with `apt-get install dataset-fashion-mnist`, pass `--data-dir DIR` "
    "for a folder that contains them, or run `fedgraft download-data --data-dir DIR` on a "
    "machine with internet access and copy DIR here."
)


def load_fashion_mnist(split: str = "train", data_dir: Path | str | None = None) -> ImageArrays:
    """Load one split of Fashion-MNIST as (N, 28, 28) uint8 images and int64 labels.

    ``split`` is "train" (60000 images) or "test" (10000 images). ``data_dir`` defaults to
    FASHION_MNIST_DIR. Raises DataError when a file is missing, truncated or corrupt.
    """
    if split not in _SPLIT_PREFIXES:
        raise ValueError(
            f"Invalid Fashion-MNIST split {split!r}: expected one of {sorted(_SPLIT_PREFIXES)}."
        )
    folder = Path(data_dir) if data_dir is not None else FASHION_MNIST_DIR

    images_path, labels_path = _find_split_files(folder, split)
    images = _read_images(images_path)
    labels = _read_labels(labels_path)

    if len(images) != len(labels):
        raise DataError(
            f"Fashion-MNIST {split} split is inconsistent: {images_path} contains "
            f"{len(images)} images but {labels_path} contains {len(labels)} labels. "
            f"The files come from different releases or one is damaged. {_FIX_HINT}"
        )
    if len(labels) > 0 and labels.max() >= len(FASHION_MNIST_CLASSES):
        raise DataError(
            f"Fashion-MNIST labels in {labels_path} must lie in "
            f"[0, {len(FASHION_MNIST_CLASSES) - 1}], found {labels.max()}. "
            f"The file is not Fashion-MNIST or is damaged. {_FIX_HINT}"
        )

    logger.info(
        "Loaded Fashion-MNIST %s split: %d images from %s", split, len(labels), images_path.parent
    )
    return ImageArrays(images=images, labels=labels, class_names=FASHION_MNIST_CLASSES)


def download_fashion_mnist(data_dir: Path | str) -> Path:
    """Download Fashion-MNIST with torchvision's downloader and return the folder of the files.

    The files go to ``data_dir/FashionMNIST/raw/``, which ``load_fashion_mnist`` reads when
    given either ``data_dir`` or the returned folder. Raises DataError when the download fails,
    for example on an offline machine.
    """
    root = Path(data_dir)
    # torchvision is imported here because importing it takes seconds and only this
    # function needs it.
    from torchvision.datasets import FashionMNIST

    logger.info("Downloading Fashion-MNIST into %s", root)
    try:
        FashionMNIST(str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:
        # URLError is a subclass of OSError.
        raise DataError(
            f"Downloading Fashion-MNIST into {root} failed: {error}. If this machine is offline, "
            "install the files with `apt-get install dataset-fashion-mnist`, or copy the four "
            "files train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
            "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz from a machine that has "
            "them into a folder and pass it with `--data-dir DIR`."
        ) from error

    raw_folder = root / "FashionMNIST" / "raw"
    for split in _SPLIT_PREFIXES:
        _find_split_files(raw_folder, split)
    return raw_folder


def _find_split_files(data_dir: Path, split: str) -> tuple[Path, Path]:
    """Return the images and labels files of ``split`` under ``data_dir``.

    Looks in ``data_dir`` and then in torchvision's ``data_dir/FashionMNIST/raw``. In each
    folder an un-gzipped file is preferred over its ``.gz`` form because it reads faster.
    """
    if not data_dir.is_dir():
        raise DataError(f"Fashion-MNIST folder {data_dir} not found. {_FIX_HINT}")

    prefix = _SPLIT_PREFIXES[split]
    names = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for folder in (data_dir, data_dir / "FashionMNIST" / "raw"):
        found = [_existing_file(folder, name) for name in names]
        if found[0] is not None and found[1] is not None:
            return found[0], found[1]

    # Name the first missing file of the top folder so the message points at one path.
    missing = next(
        data_dir / f"{name}.gz" for name in names if _existing_file(data_dir, name) is None
    )
    raise DataError(
        f"Fashion-MNIST {split} file {missing} not found (also looked for it without .gz and "
        f"under {data_dir / 'FashionMNIST' / 'raw'}). The {split} split needs "
        f"{names[0]}.gz and {names[1]}.gz. {_FIX_HINT}"
    )


def _existing_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_bytes(path: Path) -> bytes:
    """Read a file, decompressing it when its name ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except EOFError as error:
        # gzip raises EOFError when the compressed stream stops early.
        raise DataError(
            f"Fashion-MNIST file {path} is truncated: the gzip stream ends early. {_FIX_HINT}"
        ) from error
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DataError(
            f"Fashion-MNIST file {path} is not a valid gzip file or is corrupt ({error}). "
            f"{_FIX_HINT}"
        ) from error
    except OSError as error:
        raise DataError(
            f"Fashion-MNIST file {path} could not be read ({error}). {_FIX_HINT}"
        ) from error


def _read_header(path: Path, data: bytes, magic: int, header_bytes: int) -> list[int]:
    """Check the idx magic number and return the dimensions stored in the header."""
    if len(data) < header_bytes:
        raise DataError(
            f"Fashion-MNIST file {path} is truncated: expected an idx header of {header_bytes} "
            f"bytes, got {len(data)} bytes. {_FIX_HINT}"
        )
    values = np.frombuffer(data, dtype=">u4", count=header_bytes // 4)
    if int(values[0]) != magic:
        raise DataError(
            f"Fashion-MNIST file {path} has idx magic number {int(values[0])}, expected {magic}. "
            f"The file is not a Fashion-MNIST {'image' if magic == _IMAGES_MAGIC else 'label'} "
            f"file or is damaged. {_FIX_HINT}"
        )
    return [int(value) for value in values[1:]]


def _check_length(path: Path, data: bytes, header_bytes: int, dims: list[int]) -> None:
    expected = header_bytes + int(np.prod(dims, dtype=np.int64))
    if len(data) < expected:
        raise DataError(
            f"Fashion-MNIST file {path} is truncated: its header describes {dims} "
            f"({expected} bytes after decompression), but it has {len(data)} bytes. {_FIX_HINT}"
        )
    if len(data) > expected:
        raise DataError(
            f"Fashion-MNIST file {path} is corrupt: its header describes {dims} "
            f"({expected} bytes after decompression), but it has {len(data)} bytes. {_FIX_HINT}"
        )


def _read_images(path: Path) -> np.ndarray:
    """Read an idx3 image file into a writable (N, rows, cols) uint8 array."""
    data = _read_bytes(path)
    dims = _read_header(path, data, _IMAGES_MAGIC, _IMAGES_HEADER_BYTES)
    _check_length(path, data, _IMAGES_HEADER_BYTES, dims)
    pixels = np.frombuffer(data, dtype=np.uint8, offset=_IMAGES_HEADER_BYTES)
    return pixels.reshape(dims).copy()


def _read_labels(path: Path) -> np.ndarray:
    """Read an idx1 label file into an int64 array."""
    data = _read_bytes(path)
    dims = _read_header(path, data, _LABELS_MAGIC, _LABELS_HEADER_BYTES)
    _check_length(path, data, _LABELS_HEADER_BYTES, dims)
    return np.frombuffer(data, dtype=np.uint8, offset=_LABELS_HEADER_BYTES).astype(np.int64)
