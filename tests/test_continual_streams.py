"""Task streams and input shifts, on small real Fashion-MNIST subsets and files written to tmp_path."""

import numpy as np
import pytest
from PIL import Image

from fedgraft.continual.streams import (
    SITE_SHIFTS,
    STREAMS,
    Experience,
    StreamError,
    class_incremental,
    contrast,
    create_stream,
    domain_incremental,
    from_node_data,
    gaussian_blur,
    gaussian_noise,
    identity,
    parse_shift,
    permuted_pixels,
    rotated,
    task_incremental,
)
from fedgraft.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from fedgraft.data.image_arrays import ImageArrays
from fedgraft.data.node_data import class_folder_name

TRAIN_PER_CLASS = 12
TEST_PER_CLASS = 6


def _first_per_class(data: ImageArrays, per_class: int, classes=range(10)) -> ImageArrays:
    picked = [np.flatnonzero(data.labels == label)[:per_class] for label in classes]
    return data.subset(np.sort(np.concatenate(picked)))


@pytest.fixture(scope="module")
def train() -> ImageArrays:
    """120 real training images, the first 12 of each Fashion-MNIST class, in file order."""
    return _first_per_class(load_fashion_mnist("train"), TRAIN_PER_CLASS)


# Named "test" for the tests, and defined under another name so pytest never collects it.
@pytest.fixture(scope="module", name="test")
def fixture_test_split() -> ImageArrays:
    """60 real test images, the first 6 of each class."""
    return _first_per_class(load_fashion_mnist("test"), TEST_PER_CLASS)


# Class-incremental and task-incremental splits


def test_class_split_covers_every_class_once(train, test):
    stream = class_incremental(train, test, num_tasks=5, seed=0)

    all_classes = [label for experience in stream for label in experience.classes]
    assert sorted(all_classes) == list(range(10))
    assert [len(experience.classes) for experience in stream] == [2, 2, 2, 2, 2]
    assert sum(len(experience.train) for experience in stream) == len(train)
    assert sum(len(experience.test) for experience in stream) == len(test)


def test_class_split_keeps_global_labels(train, test):
    stream = class_incremental(train, test, num_tasks=5, seed=0)

    for experience in stream:
        assert experience.train.class_names == FASHION_MNIST_CLASSES
        assert set(np.unique(experience.train.labels)) == set(experience.classes)
        assert set(np.unique(experience.test.labels)) == set(experience.classes)
        # The images are the source images of those classes, in source order.
        source = np.flatnonzero(np.isin(train.labels, experience.classes))
        assert np.array_equal(experience.train.images, train.images[source])
        assert np.array_equal(experience.train.labels, train.labels[source])


def test_class_split_seeded_order(train, test):
    first = [e.classes for e in class_incremental(train, test, num_tasks=5, seed=3)]
    again = [e.classes for e in class_incremental(train, test, num_tasks=5, seed=3)]
    other = [e.classes for e in class_incremental(train, test, num_tasks=5, seed=4)]

    assert first == again
    assert first != other


def test_class_split_without_seed_is_ascending(train, test):
    stream = class_incremental(train, test, num_tasks=5, seed=None)

    assert [e.classes for e in stream] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def test_class_split_uneven_gives_first_groups_more(train, test):
    stream = class_incremental(train, test, num_tasks=3, seed=None)

    assert [e.classes for e in stream] == [(0, 1, 2, 3), (4, 5, 6), (7, 8, 9)]


def test_class_incremental_task_labels_zero(train, test):
    stream = class_incremental(train, test, num_tasks=5, seed=0)

    assert [e.task_label for e in stream] == [0, 0, 0, 0, 0]
    assert [e.index for e in stream] == [0, 1, 2, 3, 4]


def test_task_incremental_task_label_is_index(train, test):
    stream = task_incremental(train, test, num_tasks=5, seed=0)
    class_split = class_incremental(train, test, num_tasks=5, seed=0)

    assert [e.task_label for e in stream] == [0, 1, 2, 3, 4]
    assert [e.classes for e in stream] == [e.classes for e in class_split]
    # Labels stay global in the task-incremental setting too.
    assert set(np.unique(stream[1].train.labels)) == set(class_split[1].classes)


@pytest.mark.parametrize("num_tasks", [0, -1, 11, 2.5, True])
def test_class_split_invalid_num_tasks(train, test, num_tasks):
    with pytest.raises(StreamError, match="num_tasks"):
        class_incremental(train, test, num_tasks=num_tasks, seed=0)


def test_class_split_more_tasks_than_classes(train, test):
    with pytest.raises(StreamError, match=r"num_tasks=11 is more than the 10 classes.*num_tasks <= 10"):
        class_incremental(train, test, num_tasks=11, seed=0)


def test_class_split_group_missing_from_test(train, test):
    without_last_group = test.subset(np.flatnonzero(test.labels < 8))

    with pytest.raises(StreamError, match=r"experience 4 .* has no test images"):
        class_incremental(train, without_last_group, num_tasks=5, seed=None)


def test_class_split_class_missing_from_test_warns(train, test, caplog):
    without_bags = test.subset(np.flatnonzero(test.labels != 8))

    stream = class_incremental(train, without_bags, num_tasks=5, seed=None)

    assert stream[4].classes == (8, 9)
    assert "experience 4 has no test images of classes [8]" in caplog.text


def test_class_split_different_label_maps(train, test):
    renamed = ImageArrays(test.images, test.labels, tuple(f"c{i}" for i in range(10)))

    with pytest.raises(StreamError, match="different label maps"):
        class_incremental(train, renamed, num_tasks=5, seed=0)


def test_class_split_negative_seed(train, test):
    with pytest.raises(StreamError, match="seed must be"):
        class_incremental(train, test, num_tasks=5, seed=-1)


# Shifts


SHIFTS = {
    "permuted": permuted_pixels(0),
    "rotated": rotated(30),
    "contrast": contrast(0.5),
    "blur": gaussian_blur(1.0),
    "noise": gaussian_noise(20, seed=0),
}


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_deterministic_and_changes_pixels(train, name):
    shift = SHIFTS[name]

    first = shift(train.images)
    second = shift(train.images)

    assert first.dtype == np.uint8
    assert first.shape == train.images.shape
    assert np.array_equal(first, second)
    assert not np.array_equal(first, train.images)


@pytest.mark.parametrize("name", list(SHIFTS))
def test_shift_accepts_rgb(train, name):
    rgb = np.repeat(train.images[:4, ..., None], 3, axis=-1)

    shifted = SHIFTS[name](rgb)

    assert shifted.shape == rgb.shape
    assert shifted.dtype == np.uint8


def test_shift_rebuilt_gives_same_output(train):
    assert np.array_equal(permuted_pixels(5)(train.images), permuted_pixels(5)(train.images))
    assert np.array_equal(gaussian_noise(10, 5)(train.images), gaussian_noise(10, 5)(train.images))


def test_permuted_pixels_applies_seeded_permutation(train):
    shifted = permuted_pixels(0)(train.images)

    # The documented permutation: pixel p of the output is pixel order[p] of the input,
    # the same for every image.
    order = np.random.default_rng(0).permutation(28 * 28)
    flat = train.images.reshape(len(train), -1)
    assert np.array_equal(shifted.reshape(len(train), -1), flat[:, order])


def test_permuted_pixels_seeds_differ(train):
    assert not np.array_equal(permuted_pixels(0)(train.images), permuted_pixels(1)(train.images))


def test_rotated_90_equals_rot90(train):
    # A quarter turn of a square image is exact, so it equals numpy's counter-clockwise rot90.
    assert np.array_equal(rotated(90)(train.images), np.rot90(train.images, k=1, axes=(1, 2)))


def test_contrast_worked_example():
    # Mean is (0 + 100 + 100 + 200) / 4 = 100, so 0.5 maps 0 -> 50, 100 -> 100, 200 -> 150.
    image = np.array([[[0, 100], [100, 200]]], dtype=np.uint8)

    assert contrast(0.5)(image).tolist() == [[[50, 100], [100, 150]]]
    assert contrast(1.0)(image).tolist() == image.tolist()


def test_gaussian_blur_keeps_constant_image():
    flat = np.full((1, 8, 8), 77, dtype=np.uint8)

    assert np.array_equal(gaussian_blur(2.0)(flat), flat)


def test_gaussian_blur_lowers_contrast(train):
    blurred = gaussian_blur(1.0)(train.images).astype(np.float64)

    assert blurred.std() < train.images.astype(np.float64).std()


def test_gaussian_blur_worked_example():
    # A single bright pixel spreads into the sampled, normalised kernel. Its centre weight
    # for sigma 1 and radius 3 is 1 / sum(exp(-k^2 / 2), k = -3..3) = 0.3990 per axis.
    image = np.zeros((1, 9, 9), dtype=np.uint8)
    image[0, 4, 4] = 200

    blurred = gaussian_blur(1.0)(image)

    assert blurred[0, 4, 4] == round(200 * 0.39905 ** 2)
    assert blurred.sum() == pytest.approx(200, abs=10)


def test_gaussian_noise_has_requested_std():
    grey = np.full((200, 28, 28), 128, dtype=np.uint8)

    noise = gaussian_noise(10, seed=0)(grey).astype(np.float64) - 128

    assert noise.std() == pytest.approx(10, rel=0.05)


def test_gaussian_noise_differs_per_batch(train, test):
    shift = gaussian_noise(10, seed=0)

    # Train and test images get different noise fields, even at the same positions.
    train_noise = shift(train.images[:6]).astype(np.int64) - train.images[:6]
    test_noise = shift(test.images[:6]).astype(np.int64) - test.images[:6]
    assert not np.array_equal(train_noise, test_noise)


def test_identity_returns_copy(train):
    shifted = identity()(train.images)

    assert np.array_equal(shifted, train.images)
    assert shifted is not train.images


@pytest.mark.parametrize(
    ("spec", "name"),
    [
        ("identity", "identity"),
        ("permuted", "permuted(seed=7)"),
        ("rotated:45", "rotated:45"),
        ("contrast:0.5", "contrast:0.5"),
        ("blur:1.5", "blur:1.5"),
        ("noise:25", "noise:25(seed=7)"),
    ],
)
def test_parse_shift_names(spec, name):
    assert parse_shift(spec, seed=7).name == name


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sepia", "unknown shift 'sepia'"),
        ("rotated", "needs a value"),
        ("rotated:abc", "not a number"),
        ("identity:3", "takes no value"),
        ("blur:0", "sigma must be > 0"),
        ("contrast:-1", "factor must be >= 0"),
        ("noise:-5", "std must be >= 0"),
        ("rotated:inf", "finite"),
    ],
)
def test_parse_shift_invalid(spec, message):
    with pytest.raises(StreamError, match=message):
        parse_shift(spec, seed=0)


def test_shift_rejects_float_images():
    with pytest.raises(StreamError, match="uint8"):
        rotated(10)(np.zeros((1, 4, 4), dtype=np.float32))


# Domain-incremental streams


def test_domain_incremental_same_label_space(train, test):
    stream = domain_incremental(train, test, ["identity", "rotated:90", "contrast:0.5"], seed=0)

    assert [e.description for e in stream] == ["identity", "rotated:90", "contrast:0.5"]
    assert [e.task_label for e in stream] == [0, 0, 0]
    for experience in stream:
        assert experience.classes == tuple(range(10))
        assert np.array_equal(experience.train.labels, train.labels)
        assert np.array_equal(experience.test.labels, test.labels)
    assert np.array_equal(stream[0].train.images, train.images)
    assert np.array_equal(stream[1].test.images, np.rot90(test.images, k=1, axes=(1, 2)))


def test_domain_incremental_permuted_entries_differ(train, test):
    stream = domain_incremental(train, test, ["permuted", "permuted"], seed=0)

    assert stream[0].description == "permuted(seed=0)"
    assert stream[1].description == "permuted(seed=1)"
    assert not np.array_equal(stream[0].train.images, stream[1].train.images)


def test_domain_incremental_disjoint_parts(train, test):
    stream = domain_incremental(train, test, ["identity"] * 3, seed=0, disjoint=True)

    # Rows of identity-shifted images are source rows, so they identify the source image.
    rows = [{bytes(image) for image in e.train.images} for e in stream]
    assert rows[0].isdisjoint(rows[1])
    assert rows[1].isdisjoint(rows[2])
    assert rows[0].isdisjoint(rows[2])
    assert sum(len(e.train) for e in stream) == len(train)
    assert sum(len(e.test) for e in stream) == len(test)
    # 12 images per class over 3 parts: 4 of every class in each part.
    for experience in stream:
        assert np.bincount(experience.train.labels, minlength=10).tolist() == [4] * 10


def test_domain_incremental_accepts_shift_objects(train, test):
    stream = domain_incremental(train, test, [identity(), gaussian_blur(1.0)], seed=0)

    assert [e.description for e in stream] == ["identity", "blur:1"]


def test_domain_incremental_unknown_shift(train, test):
    with pytest.raises(StreamError, match="unknown shift 'fisheye'"):
        domain_incremental(train, test, ["identity", "fisheye"], seed=0)


def test_domain_incremental_no_shifts(train, test):
    with pytest.raises(StreamError, match="no shifts"):
        domain_incremental(train, test, [], seed=0)


def test_domain_incremental_too_many_disjoint_parts(train, test):
    # 6 test images per class cannot fill 61 parts, so some part is empty.
    with pytest.raises(StreamError, match="no test images"):
        domain_incremental(train, test, ["identity"] * 61, seed=0, disjoint=True)


# Registered streams


@pytest.mark.parametrize("name", list(STREAMS))
def test_registered_stream_builds(train, test, name):
    stream = create_stream(name, train, test, seed=0)

    assert len(stream) == STREAMS[name].default_num_tasks
    assert [e.index for e in stream] == list(range(len(stream)))
    assert all(isinstance(e, Experience) for e in stream)
    assert all(len(e.train) > 0 and len(e.test) > 0 for e in stream)


def test_registered_stream_settings(train, test):
    assert [e.task_label for e in create_stream("split-fmnist-task", train, test)] == [0, 1, 2, 3, 4]
    rotations = create_stream("rotated-fmnist", train, test, num_tasks=4)
    assert [e.description for e in rotations] == ["rotated:0", "rotated:45", "rotated:90", "rotated:135"]
    sites = create_stream("shifted-sites-fmnist", train, test)
    assert [e.description.split("(")[0] for e in sites] == [s.split("(")[0] for s in SITE_SHIFTS]


def test_registered_stream_unknown_name(train, test):
    with pytest.raises(StreamError, match="unknown stream 'split-cifar'.*split-fmnist"):
        create_stream("split-cifar", train, test)


def test_shifted_sites_too_many_tasks(train, test):
    with pytest.raises(StreamError, match="num_tasks <= 4"):
        create_stream("shifted-sites-fmnist", train, test, num_tasks=5)


# The user's own stream from node data


def _write_npz(path, data: ImageArrays) -> None:
    np.savez(path, x=data.images, y=data.labels)


def _write_image_folder(root, data: ImageArrays) -> None:
    for index, (image, label) in enumerate(zip(data.images, data.labels)):
        folder = root / class_folder_name(data.class_names[label])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{index:04d}.png")


def test_from_node_data_npz_and_folder(tmp_path, train):
    first = _first_per_class(train, 10, classes=(0, 1))
    second = _first_per_class(train, 10, classes=(2, 3, 4))
    _write_npz(tmp_path / "site_a.npz", first)
    _write_image_folder(tmp_path / "site_b", second)

    stream = from_node_data(
        [tmp_path / "site_a.npz", tmp_path / "site_b"], FASHION_MNIST_CLASSES, test_fraction=0.2, seed=0
    )

    assert [e.index for e in stream] == [0, 1]
    assert [e.task_label for e in stream] == [0, 0]
    assert [e.classes for e in stream] == [(0, 1), (2, 3, 4)]
    # 10 images per class: round(10 * 0.2) = 2 go to test, 8 stay in train.
    assert np.bincount(stream[0].test.labels).tolist() == [2, 2]
    assert np.bincount(stream[1].train.labels, minlength=5).tolist() == [0, 0, 8, 8, 8]
    assert stream[1].train.class_names == FASHION_MNIST_CLASSES
    assert stream[0].description.endswith("site_a.npz")


def test_from_node_data_seeded_split(tmp_path, train):
    _write_npz(tmp_path / "a.npz", _first_per_class(train, 10, classes=(0, 1)))

    first = from_node_data([tmp_path / "a.npz"], FASHION_MNIST_CLASSES, 0.3, seed=1)[0]
    again = from_node_data([tmp_path / "a.npz"], FASHION_MNIST_CLASSES, 0.3, seed=1)[0]
    other = from_node_data([tmp_path / "a.npz"], FASHION_MNIST_CLASSES, 0.3, seed=2)[0]

    assert np.array_equal(first.test.images, again.test.images)
    assert not np.array_equal(first.test.images, other.test.images)


def test_from_node_data_task_labels(tmp_path, train):
    _write_npz(tmp_path / "a.npz", _first_per_class(train, 5, classes=(0, 1)))
    _write_npz(tmp_path / "b.npz", _first_per_class(train, 5, classes=(2, 3)))

    stream = from_node_data(
        [tmp_path / "a.npz", tmp_path / "b.npz"], FASHION_MNIST_CLASSES, 0.2, seed=0, task_labels=True
    )

    assert [e.task_label for e in stream] == [0, 1]


def test_from_node_data_label_maps_differ(tmp_path, train):
    _write_image_folder(tmp_path / "a", _first_per_class(train, 4, classes=(0, 1)))
    _write_image_folder(tmp_path / "b", _first_per_class(train, 4, classes=(2, 3)))

    with pytest.raises(StreamError, match="Pass class_names"):
        from_node_data([tmp_path / "a", tmp_path / "b"], None, 0.25, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, "0.2"])
def test_from_node_data_invalid_test_fraction(tmp_path, fraction):
    with pytest.raises(StreamError, match="test_fraction"):
        from_node_data([tmp_path / "unused.npz"], FASHION_MNIST_CLASSES, fraction, seed=0)


def test_from_node_data_no_paths():
    with pytest.raises(StreamError, match="no paths"):
        from_node_data([], FASHION_MNIST_CLASSES, 0.2, seed=0)


def test_from_node_data_too_small_for_test(tmp_path, train):
    # One image per class: it stays in train, so the experience has no test images.
    _write_npz(tmp_path / "tiny.npz", _first_per_class(train, 1, classes=(0, 1)))

    with pytest.raises(StreamError, match="no test images"):
        from_node_data([tmp_path / "tiny.npz"], FASHION_MNIST_CLASSES, 0.2, seed=0)
