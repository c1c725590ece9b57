"""Loaders for the data that a hospital or factory node brings itself.

A node passes either a folder of images, one sub-folder per class, or a ``.npz`` file with
the arrays ``x`` and ``y``. Both loaders map labels through the global label map when one
is given, so a node that has only some classes still uses the global label indices.
"""

import logging
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedgraft.data.errors import DataError
from fedgraft.data.image_arrays import ImageArrays

__all__ = [
    "IMAGE_SUFFIXES",
    "class_folder_name",
    "load_image_folder",
    "load_node_data",
    "load_npz",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

# Pillow modes of 16- and 32-bit grey images. Pillow's own convert("L") clips their
# values at 255 instead of scaling them (checked with Pillow 13.0), so _read_image
# scales them itself.
_WIDE_GREY_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")

_IMAGE_FOLDER_LAYOUT = "ROOT/<class_name>/<image>.png (or .jpg, .jpeg)"


def class_folder_name(class_name: str) -> str:
    """Return the image-folder name of a class: "/" becomes "_" because paths cannot contain it.

    For example the Fashion-MNIST class "T-shirt/top" is the folder "T-shirt_top".
    """
    return class_name.replace("/", "_")


def load_node_data(path: Path | str, class_names: Sequence[str] | None = None) -> ImageArrays:
    """Load a node's data from an image folder or an ``.npz`` file, chosen by the path."""
    path = Path(path)
    if path.is_dir():
        return load_image_folder(path, class_names)
    if path.is_file() and path.suffix.lower() == ".npz":
        return load_npz(path, class_names)
    if not path.exists():
        raise DataError(
            f"Node data {path} not found. Pass a folder laid out as {_IMAGE_FOLDER_LAYOUT} "
            "or an .npz file with arrays x and y."
        )
    raise DataError(
        f"Node data {path} is neither a folder nor an .npz file. Pass a folder laid out as "
        f"{_IMAGE_FOLDER_LAYOUT} or an .npz file with arrays x and y."
    )


def load_image_folder(root: Path | str, class_names: Sequence[str] | None = None) -> ImageArrays:
    """Load ``root/<class_name>/*.png|jpg|jpeg`` into uint8 arrays.

    With ``class_names`` (the global label map), every class folder must be the
    ``class_folder_name`` of one of those names, and a label is the index of that name.
    Without it, the label map is the sorted list of class folders. Images in sub-folders
    of a class folder belong to that class.

    Images are (N, H, W) when every image is grey and (N, H, W, 3) otherwise, with grey
    images then copied into all three channels. 16-bit grey images are scaled to 8 bits.
    Images whose size differs from the first image are resized to that size (bilinear).
    Hidden files and folders are skipped, and files with other suffixes are ignored with a
    warning. Raises DataError on an unknown class folder, an unreadable image or a folder
    without images.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(
            f"Image folder {root} not found. Pass a folder laid out as {_IMAGE_FOLDER_LAYOUT}."
        )

    class_dirs = sorted(
        entry for entry in root.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )
    label_map, folder_labels = _image_folder_labels(root, class_dirs, class_names)

    # Collect (file, label) pairs in a fixed order so that labels and the reference size
    # for resizing do not depend on the file system's listing order.
    files: list[tuple[Path, int]] = []
    # Files directly under root belong to no class, so they count as ignored.
    ignored = sum(
        1 for entry in root.iterdir() if entry.is_file() and not entry.name.startswith(".")
    )
    for class_dir in class_dirs:
        label = folder_labels[class_dir.name]
        for file in sorted(class_dir.rglob("*")):
            relative_parts = file.relative_to(class_dir).parts
            if any(part.startswith(".") for part in relative_parts) or not file.is_file():
                continue
            if file.suffix.lower() in IMAGE_SUFFIXES:
                files.append((file, label))
            else:
                ignored += 1

    if ignored:
        logger.warning(
            "Image folder %s: ignored %d files outside class folders or without a suffix in %s",
            root,
            ignored,
            IMAGE_SUFFIXES,
        )
    if not files:
        raise DataError(
            f"Image folder {root} contains no images. Expected the layout "
            f"{_IMAGE_FOLDER_LAYOUT}, with at least one image."
        )

    images, labels = _read_images(root, files)
    return ImageArrays(images=images, labels=labels, class_names=label_map)


def load_npz(path: Path | str, class_names: Sequence[str] | None = None) -> ImageArrays:
    """Load images from array ``x`` and labels from array ``y`` of an ``.npz`` file.

    ``x`` has shape (N, H, W), (N, H, W, 1) or (N, H, W, 3). It may be uint8, integer with
    values in [0, 255], or float. A float array whose values all lie in [0, 1] is scaled by
    255, and any other float array must lie in [0, 255]; both are rounded to uint8. Because
    the range decides the scaling, a float image set in [0, 255] that happens to have no
    value above 1 is read as [0, 1]. ``y`` is an integer array of shape (N,). Without
    ``class_names`` the label map is "0", "1", ... up to the largest label.
    Raises DataError naming the path and the array on any invalid content.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"npz file {path} not found. Pass an .npz file with arrays x (images) and "
            "y (labels), written with numpy.savez."
        )

    x, y = _read_npz_arrays(path)
    images = _npz_images(path, x)
    labels = _npz_labels(path, y, len(images))

    if class_names is None:
        label_map = tuple(str(label) for label in range(int(labels.max()) + 1))
    else:
        label_map = tuple(class_names)
    if labels.min() < 0 or labels.max() >= len(label_map):
        bad = labels[(labels < 0) | (labels >= len(label_map))][0]
        raise DataError(
            f"npz file {path}: array y contains label {bad}, but labels must lie in "
            f"[0, {len(label_map) - 1}] for the {len(label_map)} classes {list(label_map)}. "
            "Write y as indices into the global class list."
        )
    return ImageArrays(images=images, labels=labels, class_names=label_map)


def _image_folder_labels(
    root: Path, class_dirs: list[Path], class_names: Sequence[str] | None
) -> tuple[tuple[str, ...], dict[str, int]]:
    """Return the label map and the label of each class folder name.

    With ``class_names``, every class folder must be the folder name of one of them.
    """
    if class_names is None:
        label_map = tuple(class_dir.name for class_dir in class_dirs)
        return label_map, {name: label for label, name in enumerate(label_map)}

    label_map = tuple(class_names)
    folder_labels: dict[str, int] = {}
    for label, name in enumerate(label_map):
        folder = class_folder_name(name)
        if folder in folder_labels:
            raise DataError(
                f"Class names {label_map[folder_labels[folder]]!r} and {name!r} both map to "
                f"the class folder name {folder!r}, so image folders cannot tell them apart. "
                "Rename one of the classes."
            )
        folder_labels[folder] = label

    for class_dir in class_dirs:
        if class_dir.name not in folder_labels:
            raise DataError(
                f"Image folder {root}: class folder {class_dir.name!r} is not a known class. "
                f"Known class folders: {list(folder_labels)}. Rename the folder to one of "
                "them or remove it."
            )
    return label_map, folder_labels


def _read_images(root: Path, files: list[tuple[Path, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Read every image file and stack them into one uint8 array with its int64 labels."""
    arrays: list[np.ndarray] = []
    target_size: tuple[int, int] | None = None
    resized = 0
    for file, _ in files:
        image = _read_image(file)
        if target_size is None:
            target_size = image.size
        elif image.size != target_size:
            image = image.resize(target_size, Image.Resampling.BILINEAR)
            resized += 1
        arrays.append(np.asarray(image, dtype=np.uint8))

    if resized:
        width, height = target_size
        logger.info(
            "Image folder %s: resized %d images to %dx%d (width x height), the size of %s",
            root,
            resized,
            width,
            height,
            files[0][0],
        )

    # A mix of grey and colour images becomes RGB, with grey copied into all channels
    # exactly as Pillow's convert("RGB") does.
    if any(array.ndim == 3 for array in arrays):
        arrays = [np.repeat(a[..., None], 3, axis=-1) if a.ndim == 2 else a for a in arrays]

    labels = np.array([label for _, label in files], dtype=np.int64)
    return np.stack(arrays), labels


def _read_image(file: Path) -> Image.Image:
    """Open one image and return it in mode "L" (grey) or "RGB"."""
    try:
        with Image.open(file) as opened:
            opened.load()
            if opened.mode in _WIDE_GREY_MODES:
                image = _scale_wide_grey(opened)
            elif opened.mode == "L":
                image = opened.copy()
            else:
                image = opened.convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError) as error:
        raise DataError(
            f"Image {file} could not be read ({error}). Replace or delete the file."
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        # Pillow raises OSError for truncated files and SyntaxError for broken PNG chunks.
        raise DataError(
            f"Image {file} is corrupt or truncated ({error}). Replace or delete the file."
        ) from error
    return image


def _scale_wide_grey(image: Image.Image) -> Image.Image:
    """Scale a 16-bit grey image from [0, 65535] to an 8-bit "L" image.

    Values of a 32-bit "I" image outside [0, 65535] are clipped to that range first.
    """
    values = np.asarray(image).astype(np.float64)
    scaled = np.rint(np.clip(values, 0, 65535) / 257.0).astype(np.uint8)
    return Image.fromarray(scaled)


def _read_npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return arrays ``x`` and ``y`` of an npz file without unpickling anything."""
    # np.load gets an open file rather than the path because, given a path, numpy 2.4
    # leaves the file open when the zip archive is invalid.
    try:
        stream = path.open("rb")
    except OSError as error:
        raise _unreadable_npz_error(path, error) from error

    with stream:
        try:
            loaded = np.load(stream, allow_pickle=False)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
            raise _unreadable_npz_error(path, error) from error
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise DataError(
                f"npz file {path} contains a single array, not an npz archive. Save the "
                "images and labels with numpy.savez(path, x=images, y=labels)."
            )

        with loaded as archive:
            arrays = []
            for key in ("x", "y"):
                if key not in archive.files:
                    raise DataError(
                        f"npz file {path} has no array {key!r} (found {archive.files}). Save "
                        "the images and labels with numpy.savez(path, x=images, y=labels)."
                    )
                try:
                    arrays.append(archive[key])
                except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
                    raise DataError(
                        f"npz file {path}: array {key!r} could not be read ({error}). The "
                        "archive is damaged or the array contains pickled objects. Save it "
                        "again with numpy.savez(path, x=images, y=labels)."
                    ) from error
    return arrays[0], arrays[1]


def _unreadable_npz_error(path: Path, error: Exception) -> DataError:
    return DataError(
        f"npz file {path} could not be read ({error}). It must be a valid .npz archive "
        "written with numpy.savez(path, x=images, y=labels), without pickled objects."
    )


def _npz_images(path: Path, x: np.ndarray) -> np.ndarray:
    """Check array ``x`` and convert it to uint8 images of shape (N, H, W) or (N, H, W, 3)."""
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise DataError(
            f"npz file {path}: array x has shape {x.shape}, expected (N, H, W), (N, H, W, 1) "
            "or (N, H, W, 3)."
        )
    if len(x) == 0:
        raise DataError(f"npz file {path}: array x contains zero samples, expected at least one.")
    if x.dtype == np.uint8:
        return x

    is_integer = np.issubdtype(x.dtype, np.integer)
    if not (is_integer or np.issubdtype(x.dtype, np.floating)):
        raise DataError(
            f"npz file {path}: array x has dtype {x.dtype}, expected uint8, integer or float."
        )
    if not is_integer and not np.isfinite(x).all():
        raise DataError(
            f"npz file {path}: array x contains NaN or infinite values. Replace them with "
            "valid pixel values before saving."
        )
    low, high = x.min(), x.max()
    if low < 0 or high > 255:
        raise DataError(
            f"npz file {path}: array x has values from {low} to {high}, expected [0, 1] or "
            "[0, 255]. Rescale the images before saving."
        )
    if is_integer:
        return x.astype(np.uint8)

    scale = 255.0 if high <= 1.0 else 1.0
    return np.clip(np.rint(x.astype(np.float64) * scale), 0, 255).astype(np.uint8)


def _npz_labels(path: Path, y: np.ndarray, num_images: int) -> np.ndarray:
    """Check array ``y`` against the images and return it as int64."""
    if y.ndim != 1:
        raise DataError(f"npz file {path}: array y has shape {y.shape}, expected (N,).")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"npz file {path}: array y has dtype {y.dtype}, expected an integer dtype. "
            "Save the labels as class indices, for example y.astype(numpy.int64)."
        )
    if len(y) != num_images:
        raise DataError(
            f"npz file {path}: array x contains {num_images} images but array y contains "
            f"{len(y)} labels, expected one label per image."
        )
    return y.astype(np.int64)
