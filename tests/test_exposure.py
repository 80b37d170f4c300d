from __future__ import annotations

import numpy as np
import pytest

from siamindex import exposure as training_outliers
from siamindex import outliers as measured_outliers
from siamindex.exposure import GLYPHS, KINDS, SHARES, exposure


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_is_seeded_uint8_28x28_and_not_empty(kind):
    first = KINDS[kind](40, np.random.default_rng(3))
    again = KINDS[kind](40, np.random.default_rng(3))
    other = KINDS[kind](40, np.random.default_rng(4))
    assert first.shape == (40, 28, 28) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert (first.reshape(40, -1).max(1) > 0).all()  # no image is empty
    assert len({image.tobytes() for image in first}) > 30  # and they vary


@pytest.mark.parametrize("kind", ["glyphs", "strokes", "polygons"])
def test_drawn_kinds_are_laid_out_as_mnist(kind):
    from scipy.ndimage import center_of_mass

    for image in KINDS[kind](20, np.random.default_rng(0)):
        rows, cols = np.nonzero(image)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 <= 22
        centre = center_of_mass(image.astype(np.float64))
        assert np.allclose(centre, 14, atol=1.0)


def test_no_digit_or_look_alike_among_the_glyphs():
    assert not set(GLYPHS) & set("0123456789")
    assert not set(GLYPHS) & measured_outliers.DIGIT_LIKE


def test_trains_on_other_fonts_than_the_benchmark_measures_with():
    trained = {font.path.split("/")[-1] for font in training_outliers._fonts()}
    measured = {getattr(font, "path", "pillow") for font in measured_outliers._fonts(48)}
    assert not trained & {str(path).split("/")[-1] for path in measured}


def test_exposure_mixes_every_kind_in_its_share():
    images = exposure(200, seed=1)
    assert images.shape == (200, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, exposure(200, seed=1))
    assert sum(SHARES.values()) == pytest.approx(1.0)
    # Shuffled: the first 20 are not all of one kind (glyphs come first before shuffling).
    assert not np.array_equal(images[:20], KINDS["glyphs"](20, np.random.default_rng(1)))


def test_no_training_image_is_in_a_benchmark_set():
    trained = {image.tobytes() for image in exposure(300, seed=1)}
    for name in measured_outliers.OUTLIER_SETS:
        measured = measured_outliers.outliers(name, 100, seed=0)
        assert not trained & {image.tobytes() for image in measured}, name
