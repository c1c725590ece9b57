"""The on-disk feature cache: hit, miss, and invalidation by backbone, data and preprocessing."""

import numpy as np
import pytest
import torch

from fedgraft.data.fashion_mnist import load_fashion_mnist
from fedgraft.data.feature_cache import FeatureCache, Preprocessing, extract_features
from fedgraft.models.head import create_head
from fedgraft.models.registry import create_backbone
from fedgraft.models.state import state_dict_sha256
from fedgraft.models.transfer import TransferModel

IMAGE_SIZE = 32


@pytest.fixture(scope="module")
def model():
    backbone = create_backbone("efficientnet_lite0", "imagenet")
    return TransferModel(backbone, create_head("linear", backbone.num_features, 10), "feature-extraction")


@pytest.fixture(scope="module")
def sha256(model):
    return state_dict_sha256(model.backbone.state_dict())


@pytest.fixture(scope="module")
def images():
    return load_fashion_mnist("test").subset(np.arange(12))


def test_miss_then_hit_returns_same_features(tmp_path, model, sha256, images):
    cache = FeatureCache(tmp_path)

    first = cache.features_for(model, sha256, images, IMAGE_SIZE)
    second = cache.features_for(model, sha256, images, IMAGE_SIZE)

    assert (cache.misses, cache.hits) == (1, 1)
    assert first.shape == (12, 1280)
    assert torch.equal(first, second)
    assert len(list((tmp_path / "features").glob("*.safetensors"))) == 1


def test_cached_features_equal_direct_extraction(tmp_path, model, sha256, images):
    cached = FeatureCache(tmp_path).features_for(model, sha256, images, IMAGE_SIZE)

    assert torch.equal(cached, extract_features(model, images, IMAGE_SIZE))


def test_new_process_reads_the_file(tmp_path, model, sha256, images):
    FeatureCache(tmp_path).features_for(model, sha256, images, IMAGE_SIZE)
    fresh = FeatureCache(tmp_path)

    fresh.get_or_compute(
        FeatureCache.key(sha256, images.fingerprint(), Preprocessing.of(model, IMAGE_SIZE)),
        lambda: pytest.fail("a cached entry was recomputed"),
    )

    assert (fresh.misses, fresh.hits) == (0, 1)


def test_changed_pixel_misses(tmp_path, model, sha256, images):
    cache = FeatureCache(tmp_path)
    cache.features_for(model, sha256, images, IMAGE_SIZE)
    pixels = images.images.copy()
    pixels[0, 0, 0] ^= 1
    changed = type(images)(pixels, images.labels, images.class_names)

    cache.features_for(model, sha256, changed, IMAGE_SIZE)

    assert (cache.misses, cache.hits) == (2, 0)


def test_changed_backbone_misses(tmp_path, model, sha256, images):
    cache = FeatureCache(tmp_path)
    cache.features_for(model, sha256, images, IMAGE_SIZE)

    cache.features_for(model, "0" * 64, images, IMAGE_SIZE)

    assert (cache.misses, cache.hits) == (2, 0)


def test_changed_image_size_misses(tmp_path, model, sha256, images):
    cache = FeatureCache(tmp_path)
    cache.features_for(model, sha256, images, IMAGE_SIZE)

    cache.features_for(model, sha256, images, IMAGE_SIZE + 8)

    assert (cache.misses, cache.hits) == (2, 0)


def test_key_depends_on_every_part():
    base = Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), split=18)
    keys = {
        FeatureCache.key("a", "d", base),
        FeatureCache.key("b", "d", base),
        FeatureCache.key("a", "e", base),
        FeatureCache.key("a", "d", Preprocessing(64, (0.485, 0.456, 0.406), (0.5, 0.5, 0.5), 18)),
        FeatureCache.key("a", "d", Preprocessing(64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), split=17)),
    }

    assert len(keys) == 5


def test_corrupt_entry_is_recomputed(tmp_path, model, sha256, images, caplog):
    cache = FeatureCache(tmp_path)
    expected = cache.features_for(model, sha256, images, IMAGE_SIZE)
    entry = next((tmp_path / "features").glob("*.safetensors"))
    entry.write_bytes(entry.read_bytes()[:100])

    again = FeatureCache(tmp_path).features_for(model, sha256, images, IMAGE_SIZE)

    assert torch.equal(again, expected)
    assert "unreadable" in caplog.text
