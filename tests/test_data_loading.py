"""Tests for the Fashion-MNIST loader, the node data loaders and ImageArrays.

Every broken input is a file that the test writes under tmp_path from real Fashion-MNIST
data. Nothing touches the network: the download tests replace torchvision's class.
"""

import gzip
import logging
import shutil
import struct
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torchvision.datasets
from PIL import Image

from fedgraft.data.errors import DataError
from fedgraft.data.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    download_fashion_mnist,
    load_fashion_mnist,
)
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.node_data import (
    class_folder_name,
    load_image_folder,
    load_node_data,
    load_npz,
)

FILE_NAMES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = "apt-get install dataset-fashion-mnist"


@pytest.fixture(scope="module")
def fashion_test() -> ImageArrays:
    """The Fashion-MNIST test split, loaded once for the module."""
    return load_fashion_mnist("test")


@pytest.fixture
def sample(fashion_test) -> ImageArrays:
    """Twelve real test images, the first three of the classes Trouser, Dress, Sandal and Bag."""
    picked = [np.flatnonzero(fashion_test.labels == label)[:3] for label in (1, 3, 5, 8)]
    return fashion_test.subset(np.concatenate(picked))


def _idx_images_bytes(images: np.ndarray, magic: int = 2051) -> bytes:
    header = struct.pack(">IIII", magic, *images.shape)
    return header + images.astype(np.uint8).tobytes()


def _idx_labels_bytes(labels: np.ndarray, magic: int = 2049) -> bytes:
    return struct.pack(">II", magic, len(labels)) + labels.astype(np.uint8).tobytes()


def _write_split(folder: Path, split: str, images: bytes, labels: bytes, gz: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    images_name, labels_name = FILE_NAMES[split]
    if gz:
        (folder / f"{images_name}.gz").write_bytes(gzip.compress(images))
        (folder / f"{labels_name}.gz").write_bytes(gzip.compress(labels))
    else:
        (folder / images_name).write_bytes(images)
        (folder / labels_name).write_bytes(labels)


def _write_png_folder(root: Path, data: ImageArrays) -> list[Path]:
    """Write each image to root/<class folder>/<index>.png and return the paths in order."""
    paths = []
    for index, (image, label) in enumerate(zip(data.images, data.labels, strict=True)):
        folder = root / class_folder_name(data.class_names[label])
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:03d}.png"
        Image.fromarray(image).save(path)
        paths.append(path)
    return paths


def _assert_data_error(raised: pytest.ExceptionInfo, path: Path, hint: str) -> None:
    message = str(raised.value)
    assert str(path) in message
    assert hint in message


# Fashion-MNIST from the installed Debian package


def test_fashion_mnist_train_split():
    data = load_fashion_mnist("train")
    assert len(data) == 60000
    assert data.images.shape == (60000, 28, 28)
    assert data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.labels), np.full(10, 6000))
    assert data.class_names == FASHION_MNIST_CLASSES


def test_fashion_mnist_test_split(fashion_test):
    assert len(fashion_test) == 10000
    assert fashion_test.images.shape == (10000, 28, 28)
    assert fashion_test.images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(fashion_test.labels), np.full(10, 1000))
    # Real images use the whole 8-bit range, so this would catch a wrong header offset.
    assert fashion_test.images.min() == 0
    assert fashion_test.images.max() == 255


def test_fashion_mnist_class_names():
    assert len(FASHION_MNIST_CLASSES) == 10
    assert FASHION_MNIST_CLASSES[0] == "T-shirt/top"
    assert FASHION_MNIST_CLASSES[5] == "Sandal"
    assert FASHION_MNIST_CLASSES[9] == "Ankle boot"


def test_fashion_mnist_invalid_split():
    with pytest.raises(ValueError, match="'validation'"):
        load_fashion_mnist("validation")


def test_fashion_mnist_only_test_files(tmp_path, fashion_test):
    for name in FILE_NAMES["test"]:
        shutil.copy(FASHION_MNIST_DIR / f"{name}.gz", tmp_path)
    data = load_fashion_mnist("test", tmp_path)
    np.testing.assert_array_equal(data.images, fashion_test.images)
    np.testing.assert_array_equal(data.labels, fashion_test.labels)

    with pytest.raises(DataError) as raised:
        load_fashion_mnist("train", tmp_path)
    _assert_data_error(raised, tmp_path / "train-images-idx3-ubyte.gz", INSTALL_HINT)


def test_fashion_mnist_ungzipped_files(tmp_path, sample):
    images = _idx_images_bytes(sample.images)
    labels = _idx_labels_bytes(sample.labels)
    _write_split(tmp_path, "test", images, labels, gz=False)
    data = load_fashion_mnist("test", tmp_path)
    np.testing.assert_array_equal(data.images, sample.images)
    np.testing.assert_array_equal(data.labels, sample.labels)


def test_fashion_mnist_torchvision_layout(tmp_path, sample):
    images = _idx_images_bytes(sample.images)
    labels = _idx_labels_bytes(sample.labels)
    _write_split(tmp_path / "FashionMNIST" / "raw", "train", images, labels)
    data = load_fashion_mnist("train", str(tmp_path))
    np.testing.assert_array_equal(data.images, sample.images)
    np.testing.assert_array_equal(data.labels, sample.labels)


def test_fashion_mnist_missing_folder(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(DataError) as raised:
        load_fashion_mnist("train", missing)
    _assert_data_error(raised, missing, INSTALL_HINT)
    assert "--data-dir DIR" in str(raised.value)
    assert "fedgraft download-data --data-dir DIR" in str(raised.value)


def test_fashion_mnist_missing_labels_file(tmp_path):
    shutil.copy(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataError) as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, tmp_path / "t10k-labels-idx1-ubyte.gz", INSTALL_HINT)


def test_fashion_mnist_truncated_gzip(tmp_path):
    shutil.copy(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", tmp_path)
    real = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes()
    images_path = tmp_path / "t10k-images-idx3-ubyte.gz"
    images_path.write_bytes(real[:1000])
    with pytest.raises(DataError, match="truncated") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, images_path, INSTALL_HINT)
    assert isinstance(raised.value.__cause__, EOFError)


def test_fashion_mnist_truncated_idx(tmp_path, sample):
    images = _idx_images_bytes(sample.images)
    labels = _idx_labels_bytes(sample.labels)
    _write_split(tmp_path, "test", images[:-100], labels, gz=False)
    with pytest.raises(DataError, match="truncated") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, tmp_path / "t10k-images-idx3-ubyte", INSTALL_HINT)


def test_fashion_mnist_truncated_header(tmp_path, sample):
    labels = _idx_labels_bytes(sample.labels)
    _write_split(tmp_path, "test", _idx_images_bytes(sample.images), labels[:5])
    with pytest.raises(DataError, match="idx header of 8 bytes") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, tmp_path / "t10k-labels-idx1-ubyte.gz", INSTALL_HINT)


def test_fashion_mnist_extra_bytes(tmp_path, sample):
    images = _idx_images_bytes(sample.images) + b"\x00" * 10
    _write_split(tmp_path, "test", images, _idx_labels_bytes(sample.labels))
    with pytest.raises(DataError, match="corrupt") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, tmp_path / "t10k-images-idx3-ubyte.gz", INSTALL_HINT)


def test_fashion_mnist_bad_magic(tmp_path, sample):
    # Label magic in the image file, as if the two files had been swapped.
    images = _idx_images_bytes(sample.images, magic=2049)
    _write_split(tmp_path, "train", images, _idx_labels_bytes(sample.labels))
    with pytest.raises(DataError, match="magic number 2049, expected 2051") as raised:
        load_fashion_mnist("train", tmp_path)
    _assert_data_error(raised, tmp_path / "train-images-idx3-ubyte.gz", INSTALL_HINT)


def test_fashion_mnist_not_gzip(tmp_path, sample):
    _write_split(tmp_path, "test", _idx_images_bytes(sample.images), b"")
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels_path.write_bytes(b"this is not a gzip file")
    with pytest.raises(DataError, match="not a valid gzip file") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, labels_path, INSTALL_HINT)


def test_fashion_mnist_corrupt_gzip_body(tmp_path, sample):
    _write_split(tmp_path, "test", _idx_images_bytes(sample.images), b"")
    labels_path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    compressed = bytearray(gzip.compress(_idx_labels_bytes(sample.labels)))
    # Flip bits in the deflate stream, after the 10-byte gzip header.
    for position in range(12, len(compressed) - 8):
        compressed[position] ^= 0x5A
    labels_path.write_bytes(bytes(compressed))
    with pytest.raises(DataError) as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, labels_path, INSTALL_HINT)


def test_fashion_mnist_count_mismatch(tmp_path, sample):
    images = _idx_images_bytes(sample.images)
    labels = _idx_labels_bytes(sample.labels[:-1])
    _write_split(tmp_path, "test", images, labels)
    with pytest.raises(DataError, match="12 images but") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, tmp_path / "t10k-labels-idx1-ubyte.gz", INSTALL_HINT)


def test_fashion_mnist_label_out_of_range(tmp_path, sample):
    labels = sample.labels.copy()
    labels[4] = 10
    _write_split(tmp_path, "test", _idx_images_bytes(sample.images), _idx_labels_bytes(labels))
    with pytest.raises(DataError, match="found 10") as raised:
        load_fashion_mnist("test", tmp_path)
    _assert_data_error(raised, tmp_path / "t10k-labels-idx1-ubyte.gz", INSTALL_HINT)


# Download, with torchvision's class replaced so that nothing goes to the network


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("Error downloading train-images-idx3-ubyte.gz"),
        URLError("[Errno -3] Temporary failure in name resolution"),
        OSError("Network is unreachable"),
    ],
)
def test_download_offline(tmp_path, monkeypatch, error):
    class OfflineFashionMNIST:
        def __init__(self, root, train=True, download=False):
            raise error

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", OfflineFashionMNIST)
    with pytest.raises(DataError) as raised:
        download_fashion_mnist(tmp_path)
    _assert_data_error(raised, tmp_path, INSTALL_HINT)
    assert "offline" in str(raised.value)
    assert "t10k-labels-idx1-ubyte.gz" in str(raised.value)
    assert raised.value.__cause__ is error


def test_download_returns_readable_folder(tmp_path, monkeypatch, fashion_test):
    class CopyingFashionMNIST:
        """Stands in for torchvision: puts the installed files where it would download them."""

        def __init__(self, root, train=True, download=False):
            raw = Path(root) / "FashionMNIST" / "raw"
            raw.mkdir(parents=True)
            for names in FILE_NAMES.values():
                for name in names:
                    shutil.copy(FASHION_MNIST_DIR / f"{name}.gz", raw)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", CopyingFashionMNIST)
    folder = download_fashion_mnist(tmp_path)
    assert folder == tmp_path / "FashionMNIST" / "raw"
    for data_dir in (folder, tmp_path):
        data = load_fashion_mnist("test", data_dir)
        np.testing.assert_array_equal(data.labels, fashion_test.labels)


# Image folders


def test_image_folder_roundtrip(tmp_path, sample):
    _write_png_folder(tmp_path, sample)
    data = load_image_folder(tmp_path)
    # Without a label map, the classes are the sorted folder names.
    assert data.class_names == ("Bag", "Dress", "Sandal", "Trouser")
    assert data.images.shape == (12, 28, 28)
    assert data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(data.labels), [3, 3, 3, 3])
    sample_names = np.array(sample.class_names)[sample.labels]
    for name in data.class_names:
        original = sample.images[sample_names == name]
        loaded = data.images[data.labels == data.class_names.index(name)]
        np.testing.assert_array_equal(loaded, original)


def test_image_folder_subset_gets_global_labels(tmp_path, sample):
    _write_png_folder(tmp_path, sample)
    data = load_image_folder(tmp_path, FASHION_MNIST_CLASSES)
    assert data.class_names == FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(np.unique(data.labels), [1, 3, 5, 8])
    # Files are read in sorted folder order: Bag, Dress, Sandal, Trouser.
    np.testing.assert_array_equal(data.labels, np.repeat([8, 3, 5, 1], 3))
    bags = sample.images[sample.labels == 8]
    np.testing.assert_array_equal(data.images[:3], bags)


def test_image_folder_slash_in_class_name(tmp_path, fashion_test):
    t_shirts = fashion_test.subset(np.flatnonzero(fashion_test.labels == 0)[:2])
    _write_png_folder(tmp_path, t_shirts)
    assert (tmp_path / "T-shirt_top").is_dir()
    data = load_image_folder(tmp_path, FASHION_MNIST_CLASSES)
    np.testing.assert_array_equal(data.labels, [0, 0])


def test_image_folder_unknown_class(tmp_path, sample):
    _write_png_folder(tmp_path, sample)
    (tmp_path / "Bags").mkdir()
    with pytest.raises(DataError) as raised:
        load_image_folder(tmp_path, FASHION_MNIST_CLASSES)
    message = str(raised.value)
    assert str(tmp_path) in message
    assert "'Bags'" in message
    assert "'Ankle boot'" in message
    assert "Rename the folder" in message


def test_image_folder_rgb_mix(tmp_path, sample):
    paths = _write_png_folder(tmp_path, sample)
    colour = np.zeros((28, 28, 3), dtype=np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(paths[0])
    data = load_image_folder(tmp_path)
    assert data.images.shape == (12, 28, 28, 3)
    red = data.images[data.labels == data.class_names.index("Trouser")][0]
    np.testing.assert_array_equal(red, colour)
    # Grey images are copied into all three channels.
    grey = data.images[data.labels == data.class_names.index("Bag")]
    np.testing.assert_array_equal(grey[..., 0], sample.images[sample.labels == 8])
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])


def test_image_folder_resizes_mixed_sizes(tmp_path, sample, caplog):
    paths = _write_png_folder(tmp_path, sample)
    big = Image.fromarray(sample.images[-1]).resize((56, 40))
    big.save(paths[-1])
    with caplog.at_level(logging.INFO, logger="fedgraft.data.node_data"):
        data = load_image_folder(tmp_path)
    assert data.images.shape == (12, 28, 28)
    resize_logs = [record for record in caplog.records if "resized 1 images" in record.message]
    assert len(resize_logs) == 1


def test_image_folder_16_bit_grey_scaled(tmp_path):
    folder = tmp_path / "scan"
    folder.mkdir()
    wide = np.array([[0, 257, 65535], [32896, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(wide).save(folder / "a.png")
    data = load_image_folder(tmp_path)
    np.testing.assert_array_equal(data.images[0], [[0, 1, 255], [128, 4, 233]])


def test_image_folder_skips_hidden_and_counts_others(tmp_path, sample, caplog):
    paths = _write_png_folder(tmp_path, sample)
    (paths[0].parent / ".DS_Store").write_bytes(b"\x00\x01")
    hidden = paths[0].parent / ".thumbnails"
    hidden.mkdir()
    (hidden / "broken.png").write_bytes(b"not a png")
    (paths[0].parent / "notes.txt").write_text("scanner settings")
    (tmp_path / "README.md").write_text("node data")
    with caplog.at_level(logging.WARNING, logger="fedgraft.data.node_data"):
        data = load_image_folder(tmp_path)
    assert len(data) == 12
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ignored 2 files" in warnings[0].message


def test_image_folder_corrupt_png(tmp_path, sample):
    paths = _write_png_folder(tmp_path, sample)
    paths[4].write_bytes(paths[4].read_bytes()[:60])
    with pytest.raises(DataError) as raised:
        load_image_folder(tmp_path)
    _assert_data_error(raised, paths[4], "Replace or delete the file")


def test_image_folder_not_an_image(tmp_path, sample):
    paths = _write_png_folder(tmp_path, sample)
    paths[7].write_bytes(b"plain text with a .png name")
    with pytest.raises(DataError) as raised:
        load_image_folder(tmp_path)
    _assert_data_error(raised, paths[7], "Replace or delete the file")


def test_image_folder_without_images(tmp_path):
    (tmp_path / "Bag").mkdir()
    (tmp_path / "Bag" / "list.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="contains no images") as raised:
        load_image_folder(tmp_path)
    _assert_data_error(raised, tmp_path, "ROOT/<class_name>/<image>.png")


def test_image_folder_missing_root(tmp_path):
    missing = tmp_path / "hospital-a"
    with pytest.raises(DataError) as raised:
        load_image_folder(missing)
    _assert_data_error(raised, missing, "ROOT/<class_name>/<image>.png")


# npz files


def test_npz_uint8_roundtrip(tmp_path, sample):
    path = tmp_path / "node.npz"
    np.savez(path, x=sample.images, y=sample.labels)
    data = load_npz(path, FASHION_MNIST_CLASSES)
    np.testing.assert_array_equal(data.images, sample.images)
    np.testing.assert_array_equal(data.labels, sample.labels)
    assert data.class_names == FASHION_MNIST_CLASSES
    assert data.labels.dtype == np.int64


def test_npz_default_class_names(tmp_path, sample):
    path = tmp_path / "node.npz"
    np.savez_compressed(path, x=sample.images, y=sample.labels.astype(np.int32))
    data = load_npz(path)
    assert data.class_names == tuple(str(label) for label in range(9))
    np.testing.assert_array_equal(data.labels, sample.labels)


def test_npz_float_unit_range(tmp_path, sample):
    path = tmp_path / "node.npz"
    np.savez(path, x=sample.images.astype(np.float32) / 255.0, y=sample.labels)
    data = load_npz(path)
    assert data.images.dtype == np.uint8
    np.testing.assert_array_equal(data.images, sample.images)


def test_npz_float_byte_range_with_channel(tmp_path, sample):
    path = tmp_path / "node.npz"
    np.savez(path, x=sample.images[..., None].astype(np.float64), y=sample.labels)
    data = load_npz(path)
    assert data.images.shape == (12, 28, 28)
    np.testing.assert_array_equal(data.images, sample.images)


def test_npz_rgb(tmp_path, sample):
    path = tmp_path / "node.npz"
    rgb = np.repeat(sample.images[..., None], 3, axis=-1)
    np.savez(path, x=rgb, y=sample.labels)
    data = load_npz(path)
    assert data.images.shape == (12, 28, 28, 3)


@pytest.mark.parametrize(
    ("arrays", "expected_text"),
    [
        ({"x": np.zeros((2, 4, 4), np.uint8)}, "no array 'y'"),
        ({"y": np.zeros(2, np.int64)}, "no array 'x'"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 10])}, "contains label 10"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([-1, 0])}, "contains label -1"),
        ({"x": np.full((2, 4, 4), np.nan), "y": np.array([0, 1])}, "NaN"),
        ({"x": np.zeros((0, 4, 4), np.uint8), "y": np.zeros(0, np.int64)}, "zero samples"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0, 1, 2])}, "3 labels"),
        ({"x": np.zeros((2, 16), np.uint8), "y": np.array([0, 1])}, "shape (2, 16)"),
        ({"x": np.zeros((2, 4, 4, 2), np.uint8), "y": np.array([0, 1])}, "shape (2, 4, 4, 2)"),
        ({"x": np.full((2, 4, 4), 300.0), "y": np.array([0, 1])}, "to 300.0"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([0.0, 1.0])}, "dtype float64"),
        ({"x": np.zeros((2, 4, 4), np.uint8), "y": np.array([[0], [1]])}, "shape (2, 1)"),
    ],
)
def test_npz_invalid_content(tmp_path, arrays, expected_text):
    path = tmp_path / "node.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError) as raised:
        load_npz(path, FASHION_MNIST_CLASSES)
    message = str(raised.value)
    assert str(path) in message
    assert expected_text in message


def test_npz_pickled_array(tmp_path):
    path = tmp_path / "node.npz"
    np.savez(path, x=np.array([{"image": 1}], dtype=object), y=np.array([0]))
    with pytest.raises(DataError, match="'x' could not be read") as raised:
        load_npz(path)
    _assert_data_error(raised, path, "numpy.savez")


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_npz_bad_archive(tmp_path, sample, damage):
    path = tmp_path / "node.npz"
    np.savez(path, x=sample.images, y=sample.labels)
    if damage == "garbage":
        path.write_bytes(b"not an npz archive at all")
    else:
        path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(DataError, match="could not be read") as raised:
        load_npz(path)
    _assert_data_error(raised, path, "numpy.savez")


def test_npz_single_npy_array(tmp_path, sample):
    path = tmp_path / "node.npz"
    with path.open("wb") as stream:
        np.save(stream, sample.images)
    with pytest.raises(DataError, match="single array") as raised:
        load_npz(path)
    _assert_data_error(raised, path, "numpy.savez")


def test_npz_missing_file(tmp_path):
    missing = tmp_path / "node.npz"
    with pytest.raises(DataError) as raised:
        load_npz(missing)
    _assert_data_error(raised, missing, "numpy.savez")


# load_node_data dispatch


def test_node_data_dispatch(tmp_path, sample):
    folder = tmp_path / "images"
    _write_png_folder(folder, sample)
    npz_path = tmp_path / "node.npz"
    np.savez(npz_path, x=sample.images, y=sample.labels)

    from_folder = load_node_data(folder, FASHION_MNIST_CLASSES)
    from_npz = load_node_data(str(npz_path), FASHION_MNIST_CLASSES)
    assert len(from_folder) == 12
    assert from_npz.fingerprint() == sample.fingerprint()


@pytest.mark.parametrize("name", ["node.csv", "missing.npz"])
def test_node_data_unsupported_path(tmp_path, name):
    path = tmp_path / name
    if name.endswith(".csv"):
        path.write_text("x,y\n")
    with pytest.raises(DataError) as raised:
        load_node_data(path)
    _assert_data_error(raised, path, "an .npz file with arrays x and y")


# ImageArrays


def test_fingerprint_stable(sample):
    copy = ImageArrays(sample.images.copy(), sample.labels.copy(), sample.class_names)
    assert sample.fingerprint() == sample.fingerprint()
    assert copy.fingerprint() == sample.fingerprint()
    assert len(sample.fingerprint()) == 64


def test_fingerprint_changes_with_one_pixel(sample):
    images = sample.images.copy()
    images[5, 10, 10] ^= 1
    changed = ImageArrays(images, sample.labels, sample.class_names)
    assert changed.fingerprint() != sample.fingerprint()


def test_fingerprint_changes_with_label_and_names(sample):
    labels = sample.labels.copy()
    labels[0] = 0
    relabelled = ImageArrays(sample.images, labels, sample.class_names)
    renamed = ImageArrays(sample.images, sample.labels, sample.class_names[:-1] + ("Boot",))
    assert relabelled.fingerprint() != sample.fingerprint()
    assert renamed.fingerprint() != sample.fingerprint()


def test_fingerprint_changes_with_shape(sample):
    # Same bytes, different shape: 12 images of 28x28 against 24 images of 14x28.
    reshaped = ImageArrays(
        sample.images.reshape(24, 14, 28), np.repeat(sample.labels, 2), sample.class_names
    )
    same_bytes = ImageArrays(sample.images, sample.labels, sample.class_names)
    assert reshaped.fingerprint() != same_bytes.fingerprint()


def test_subset_keeps_label_map(sample):
    part = sample.subset(np.array([0, 11]))
    assert len(part) == 2
    assert part.class_names == sample.class_names
    np.testing.assert_array_equal(part.images[1], sample.images[11])
    np.testing.assert_array_equal(part.labels, sample.labels[[0, 11]])


def test_subset_index_out_of_range(sample):
    with pytest.raises(DataError, match="got indices from 0 to 12"):
        sample.subset(np.array([0, 12]))


@pytest.mark.parametrize(
    ("images", "labels", "class_names", "expected_text"),
    [
        (np.zeros((2, 4, 4), np.float32), np.array([0, 1]), ("a", "b"), "uint8"),
        (np.zeros((2, 4, 4, 4), np.uint8), np.array([0, 1]), ("a", "b"), "(2, 4, 4, 4)"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 1, 1]), ("a", "b"), "2 images but 3"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 2]), ("a", "b"), "[0, 1]"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 1], np.int32), ("a", "b"), "int32"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), ("a", "a"), "unique"),
        (np.zeros((2, 4, 4), np.uint8), np.array([0, 1]), ["a", "b"], "tuple of str"),
    ],
)
def test_image_arrays_rejects_inconsistent(images, labels, class_names, expected_text):
    with pytest.raises(DataError) as raised:
        ImageArrays(images, labels, class_names)
    assert expected_text in str(raised.value)


def test_data_error_is_value_error():
    assert issubclass(DataError, ValueError)
