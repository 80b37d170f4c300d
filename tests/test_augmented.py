"""mnist-aug:N: deterministic, shard-independent, recognisably the digits it was made from."""

from __future__ import annotations

import numpy as np
import pytest

from siamindex.augmented import SHARD_SIZE, AugmentedMnist, distort, is_spec
from siamindex.data import load_dataset
from siamindex.errors import DataError


@pytest.mark.parametrize(
    ("spec", "count", "seed"),
    [
        ("mnist-aug:1000", 1000, 0),
        ("mnist-aug:100k", 100_000, 0),
        ("mnist-aug:1M:7", 1_000_000, 7),
        ("mnist-aug:1_000", 1000, 0),
    ],
)
def test_parse(spec, count, seed):
    assert AugmentedMnist.parse(spec) == AugmentedMnist(count, seed)
    assert is_spec(spec)


@pytest.mark.parametrize("spec", ["mnist-aug:", "mnist-aug:0", "mnist-aug:-5", "mnist-aug:10x"])
def test_bad_specs_say_how_to_write_one(spec):
    with pytest.raises(DataError, match="mnist-aug:"):
        AugmentedMnist.parse(spec)


def test_shards_cover_the_count():
    source = AugmentedMnist(25_000)
    assert source.shards == 3
    assert [source.shard_rows(i) for i in range(3)] == [
        (0, 10_000),
        (10_000, 20_000),
        (20_000, 25_000),
    ]
    with pytest.raises(IndexError):
        source.shard_rows(3)


def test_same_seed_same_bytes_and_shards_do_not_depend_on_the_set_size(mnist_train):
    small, big = AugmentedMnist(2 * SHARD_SIZE + 10), AugmentedMnist(1_000_000)
    first = small.shard(1, mnist_train.images, mnist_train.labels)
    again = small.shard(1, mnist_train.images, mnist_train.labels)
    other = big.shard(1, mnist_train.images, mnist_train.labels)
    for a, b, c in zip(first, again, other, strict=True):
        assert a.tobytes() == b.tobytes() == c.tobytes()
    seeded = AugmentedMnist(2 * SHARD_SIZE, seed=1).shard(1, mnist_train.images, mnist_train.labels)
    assert seeded[0].tobytes() != first[0].tobytes()
    last = small.shard(2, mnist_train.images, mnist_train.labels)
    assert len(last[0]) == 10 and last[0].dtype == np.uint8


def test_each_image_is_its_source_digit_distorted(mnist_train):
    images, labels, source = AugmentedMnist(500).shard(0, mnist_train.images, mnist_train.labels)
    assert images.shape == (500, 28, 28)
    assert np.array_equal(labels, mnist_train.labels[source])
    original = mnist_train.images[source].reshape(500, -1).astype(float)
    made = images.reshape(500, -1).astype(float)
    assert not np.array_equal(original, made)
    own = [np.corrcoef(a, b)[0, 1] for a, b in zip(original, made, strict=True)]
    shuffled = [np.corrcoef(a, b)[0, 1] for a, b in zip(original, made[::-1], strict=True)]
    assert np.median(own) > 0.5
    assert np.median(own) > np.median(shuffled) + 0.2
    # Ink is kept, not smeared away or invented: about as much as the source's.
    assert 0.8 < made.sum() / original.sum() < 1.2


def test_identity_distortion_is_the_identity(mnist_train):
    class Still:
        def uniform(self, low, high=None, size=None):
            if isinstance(low, tuple):
                low, high = low
            return np.full(size, 1.0 if low > 0 else 0.0)

        def normal(self, mean, scale, size):
            return np.zeros(size)

    images = mnist_train.images[:20]
    assert np.array_equal(distort(images, Still()), images)


def test_load_dataset_reads_it_as_a_train_split(mnist_test):
    train = load_dataset("mnist-aug:1200", "train")
    assert len(train) == 1200 and train.source == "mnist-aug:1200:0"
    assert train.class_names == mnist_test.class_names
    test = load_dataset("mnist-aug:1200", "test")
    assert test.source == "mnist" and len(test) == len(mnist_test)
