from __future__ import annotations

import numpy as np
import pytest

from siamindex.pairs import article_pairs, balanced_pairs, make_pairs


@pytest.fixture
def labels():
    return np.random.default_rng(3).integers(0, 10, size=2000)


def test_seed_sampler_follows_the_article(labels):
    pairs = article_pairs(labels, min_equals=800, rng=np.random.default_rng(0))
    assert len(pairs) == len(labels)
    np.testing.assert_array_equal(pairs.left, np.arange(len(labels)))
    # The first min_equals pairs are all same-class; the rest are same-class only by chance.
    assert np.all(pairs.is_same[:800] == 1)
    assert np.all(labels[pairs.right[:800]] == labels[:800])
    rest = pairs.is_same[800:].mean()
    assert 0.05 < rest < 0.16
    np.testing.assert_array_equal(pairs.is_same, labels[pairs.left] == labels[pairs.right])


def test_seed_sampler_scales_min_equals_like_the_article(labels):
    pairs = make_pairs(labels, "article", np.random.default_rng(0), same_fraction=15_000 / 40_000)
    assert np.all(pairs.is_same[:750] == 1)


def test_balanced_sampler_is_half_positive_and_correctly_labelled(labels):
    pairs = balanced_pairs(labels, per_image=2, rng=np.random.default_rng(0))
    assert len(pairs) == 4 * len(labels)
    assert pairs.is_same.mean() == 0.5
    same = pairs.is_same == 1
    assert np.all(labels[pairs.left[same]] == labels[pairs.right[same]])
    assert np.all(labels[pairs.left[~same]] != labels[pairs.right[~same]])
    assert not np.any(pairs.left[same] == pairs.right[same])  # never paired with itself
    # Each image appears as the left side of exactly 2 same and 2 different pairs.
    np.testing.assert_array_equal(np.bincount(pairs.left[same]), np.full(len(labels), 2))
    np.testing.assert_array_equal(np.bincount(pairs.left[~same]), np.full(len(labels), 2))


@pytest.mark.parametrize("sampler", ["article", "balanced"])
def test_same_seed_same_pairs(labels, sampler):
    a = make_pairs(labels, sampler, np.random.default_rng(7))
    b = make_pairs(labels, sampler, np.random.default_rng(7))
    c = make_pairs(labels, sampler, np.random.default_rng(8))
    np.testing.assert_array_equal(a.right, b.right)
    np.testing.assert_array_equal(a.left, b.left)
    assert not np.array_equal(a.right, c.right)


def test_bad_sampler_arguments(labels):
    with pytest.raises(ValueError, match="unknown sampler"):
        make_pairs(labels, "nope", np.random.default_rng(0))
    with pytest.raises(ValueError, match="min_equals"):
        article_pairs(labels, len(labels) + 1, np.random.default_rng(0))
