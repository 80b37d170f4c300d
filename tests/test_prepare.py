"""--prepare: any drawing, any size, either polarity, anywhere on the page -> MNIST's layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy.ndimage import center_of_mass

from siamindex.errors import DataError
from siamindex.inputs import load_images
from siamindex.prepare import is_mnist_like, mnist_layout, prepare


def page_of(digit: np.ndarray, width: int, height: int, zoom: float, at: tuple[float, float],
            dark_ink: bool, noise: float, seed: int) -> np.ndarray:  # fmt: skip
    """An MNIST digit drawn large on a page: zoomed, placed at ``at`` (fractions of the free
    space), dark on light if ``dark_ink``, with Gaussian noise of ``noise`` gray levels."""
    rng = np.random.default_rng(seed)
    side = max(8, int(28 * zoom))
    big = np.asarray(Image.fromarray(digit).resize((side, side), Image.Resampling.BILINEAR))
    page = np.zeros((height, width))
    top = int(at[0] * max(0, height - side))
    left = int(at[1] * max(0, width - side))
    patch = big[: height - top, : width - left]
    page[top : top + patch.shape[0], left : left + patch.shape[1]] = patch
    page = 255 - page if dark_ink else page
    page = page + rng.normal(0, noise, page.shape)
    return np.clip(np.round(page), 0, 255).astype(np.uint8)


def assert_mnist_layout(image: np.ndarray) -> None:
    assert image.shape == (28, 28) and image.dtype == np.uint8
    assert is_mnist_like(image)  # light ink on a dark background
    rows, cols = np.nonzero(image > 40)
    assert 14 <= max(np.ptp(rows), np.ptp(cols)) <= 21  # the ink fills a 20-pixel box
    assert np.allclose(center_of_mass(image.astype(float)), 14.0, atol=0.6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row=st.integers(0, 9999),
    width=st.integers(40, 320),
    height=st.integers(40, 320),
    zoom=st.floats(1.2, 6.0),
    at=st.tuples(st.floats(0, 1), st.floats(0, 1)),
    dark_ink=st.booleans(),
    noise=st.sampled_from([0.0, 4.0, 12.0]),
)
def test_any_page_comes_out_in_mnist_layout(mnist_test, row, width, height, zoom, at, dark_ink,
                                            noise):  # fmt: skip
    digit = mnist_test.images[row]
    zoom = min(zoom, (min(width, height) - 2) / 28)
    page = page_of(digit, width, height, max(zoom, 0.5), at, dark_ink, noise, seed=row)
    assert_mnist_layout(prepare(page, "mnist"))


def test_auto_keeps_mnist_images_and_lays_out_the_rest(mnist_test):
    digit = mnist_test.images[0]
    np.testing.assert_array_equal(prepare(digit, "auto"), digit)  # already MNIST-like
    assert_mnist_layout(prepare(255 - digit, "auto"))  # dark on light: inverted, laid out
    np.testing.assert_array_equal(prepare(255 - digit, "none"), 255 - digit)
    with pytest.raises(DataError, match="not 28x28; use --prepare mnist"):
        prepare(np.zeros((30, 40), np.uint8), "none")
    with pytest.raises(DataError, match="no ink that stands out"):
        prepare(np.full((50, 50), 200, np.uint8), "mnist")
    with pytest.raises(DataError, match="Unknown --prepare mode 'big'"):
        prepare(digit, "big")


def test_a_digit_laid_out_again_stays_close_to_itself(mnist_test):
    # MNIST digits are already in this layout: doing it again moves little ink.
    for digit in mnist_test.images[:50]:
        again = mnist_layout(digit).astype(float)
        assert np.abs(again - digit).sum() / digit.sum() < 0.5


def test_photo_like_pages_get_the_verdict_of_their_mnist_version(small_idx_dir, mnist_test,
                                                                  tmp_path):  # fmt: skip
    # An index whose answers mean something without a trained encoder: raw pixels (1-NN about
    # 0.85 here). A page is a 300x200 photo-like sheet: dark ink, off-centre, noisy paper.
    from fakes import fake_encoder_file

    from siamindex.build import BuildSettings, build_index
    from siamindex.evaluation import raw_pixels

    settings = BuildSettings(encoder=fake_encoder_file(tmp_path), index=tmp_path / "raw",
                             data_dir=small_idx_dir, splits=("train",), progress=False)  # fmt: skip
    index, _ = build_index(settings, embed=raw_pixels)
    rows = range(100, 140)
    names = []
    for row in rows:
        page = page_of(mnist_test.images[row], 300, 200, zoom=5.0, at=(0.8, 0.15),
                       dark_ink=True, noise=10.0, seed=row)  # fmt: skip
        Image.fromarray(page).save(tmp_path / f"{row}.png")
        names.append(str(tmp_path / f"{row}.png"))
    pages = load_images(names)  # --prepare auto, as the CLI does
    assert pages.pixels.shape == (40, 28, 28)
    on_pages = np.array([r.matches[0].class_name for r in index.query(pages.pixels, k=1)])
    originals = np.array([r.matches[0].class_name for r in index.query(mnist_test.images[rows])])
    truth = np.array([str(t) for t in mnist_test.labels[rows]])
    assert np.mean(on_pages == originals) >= 0.85
    assert np.mean(on_pages == truth) >= np.mean(originals == truth) - 0.05
    with pytest.raises(DataError, match="is 300x200; expected 28x28"):
        load_images(names[:1], prepare="none")


def test_arrays_are_prepared_too(mnist_test, tmp_path):
    np.save(tmp_path / "inverted.npy", 255 - mnist_test.images[:3])
    loaded = load_images([str(tmp_path / "inverted.npy")])
    for image in loaded.pixels:
        assert_mnist_layout(image)
    untouched = load_images([str(tmp_path / "inverted.npy")], prepare="none")
    np.testing.assert_array_equal(untouched.pixels, 255 - mnist_test.images[:3])


def test_light_ink_on_gray_stays_light(mnist_test):
    # A brightened scan: gray paper (128) under white ink. The paper's level alone would call
    # it dark ink on light paper and invert it.
    digit = mnist_test.images[0]
    bright = np.clip(digit.astype(int) + 128, 0, 255).astype(np.uint8)
    laid_out = prepare(bright, "mnist")
    assert_mnist_layout(laid_out)
    assert np.corrcoef(laid_out.ravel(), digit.ravel())[0, 1] > 0.8
    # And dark ink on gray paper is inverted.
    dark = np.clip(200 - digit.astype(int), 0, 255).astype(np.uint8)
    assert np.corrcoef(prepare(dark, "mnist").ravel(), digit.ravel())[0, 1] > 0.8
