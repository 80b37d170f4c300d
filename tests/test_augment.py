from __future__ import annotations

import numpy as np
import pytest

from siamindex import model  # noqa: F401  (imports TensorFlow quietly first)
from siamindex.augment import (
    RandomElastic,
    RandomLines,
    RandomNoise,
    RandomPaper,
    RandomPen,
    augmenter,
    hollow,
    thicker,
    thinner,
)


@pytest.fixture(scope="module")
def digits(mnist_test):
    return np.asarray(mnist_test.images[:64], np.float32)[..., None]


def test_off_while_not_training(digits):
    out = np.asarray(augmenter(0)(digits, training=False))
    np.testing.assert_array_equal(out, digits)


def test_changes_most_images_and_keeps_shape_and_range(digits):
    out = np.asarray(augmenter(0)(digits, training=True))
    assert out.shape == digits.shape and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 255
    changed = np.abs(out - digits).reshape(len(digits), -1).max(1) > 1
    # The first half goes through the families (the affine ones move nearly every image);
    # the second half is left exactly as it was.
    assert changed[:32].mean() > 0.8
    np.testing.assert_array_equal(out[32:], digits[32:])
    # ... and no image is wiped out: its brightest pixels (the ink) stand out from its paper.
    flat = out.reshape(len(digits), -1)
    contrast = np.percentile(flat, 99, axis=1) - np.median(flat, axis=1)
    assert (contrast > 50).mean() > 0.95


def test_each_image_gets_its_own_draw_inside_tf_data(digits):
    # Keras's RandomElasticTransform repeats one image across the batch inside tf.data; none
    # of our layers may.
    import tensorflow as tf

    layer = augmenter(3)
    data = (
        tf.data.Dataset.from_tensor_slices(digits).batch(32).map(lambda b: layer(b, training=True))
    )
    out = np.concatenate([b.numpy() for b in data])
    first = out[0].ravel()
    alike = [np.corrcoef(first, image.ravel())[0, 1] > 0.95 for image in out[1:]]
    assert sum(alike) <= 2


def test_pen_makes_strokes_thinner_thicker_or_hollow(digits):
    out = np.asarray(RandomPen(1.0, seed=1)(digits, training=True))
    ink_before = (digits > 127).reshape(len(digits), -1).sum(1)
    ink_after = (out > 127).reshape(len(digits), -1).sum(1)
    assert (ink_after < ink_before).any() and (ink_after > ink_before).any()
    assert not np.array_equal(out, digits)


def test_pen_shapes_on_a_square():
    square = np.zeros((1, 28, 28, 1), np.float32)
    square[0, 10:18, 10:18] = 255
    assert (np.asarray(thicker(square)) > 0).sum() == 10 * 10
    assert (np.asarray(thinner(square)) > 0).sum() == 7 * 7
    ring = np.asarray(hollow(square))[0, ..., 0]
    assert (ring[10:18, 10:18] == 0).all()  # inside left dark
    assert (ring[9, 9:19] == 255).all() and (ring > 0).sum() == 10 * 10 - 8 * 8


def test_elastic_without_displacement_is_the_identity(digits):
    out = np.asarray(RandomElastic(1.0, pixels=0.0, seed=0)(digits, training=True))
    np.testing.assert_allclose(out, digits, atol=1e-3)
    moved = np.asarray(RandomElastic(1.0, pixels=2.0, seed=0)(digits, training=True))
    assert np.abs(moved - digits).mean() > 5
    # Displacement moves ink; it does not create much.
    assert abs(moved.sum() - digits.sum()) / digits.sum() < 0.15


def test_paper_raises_the_background_and_keeps_the_ink_on_top(digits):
    out = np.asarray(RandomPaper(1.0, seed=2)(digits, training=True))
    background = digits == 0
    assert out[background].mean() > 10
    ink = digits > 200
    assert (out[ink] >= 0.7 * digits[ink] - 1e-3).all()  # the ink dims by at most 30%
    assert out[ink].mean() > out[background].mean() + 50


def test_noise_at_rate_zero_changes_nothing(digits):
    np.testing.assert_array_equal(
        np.asarray(RandomNoise(0.0, seed=0)(digits, training=True)), digits
    )
    noisy = np.asarray(RandomNoise(1.0, seed=0)(digits, training=True))
    assert np.abs(noisy - digits).mean() > 1


def test_same_seed_same_draws(digits):
    first = np.asarray(augmenter(7)(digits, training=True))
    second = np.asarray(augmenter(7)(digits, training=True))
    np.testing.assert_allclose(first, second, atol=1e-4)


def test_lines_cross_the_paper_and_keep_the_digit(digits):
    out = np.asarray(RandomLines(1.0, seed=4)(digits, training=True))
    assert (out >= digits).all()  # lines are drawn over, never erase
    added = (out > digits + 50).reshape(len(digits), -1).sum(1)
    assert (added >= 15).all()  # at least one line, some 20+ pixels long, in every image
