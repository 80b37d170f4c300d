"""Non-digit sets: seeded, MNIST-shaped, and laid out as MNIST's digits were."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.ndimage import center_of_mass

from siamindex.errors import DataError
from siamindex.outliers import DIGIT_LIKE, GLYPHS, OUTLIER_SETS, mnist_layout, outliers


@pytest.mark.parametrize("name", sorted(OUTLIER_SETS))
def test_every_set_is_seeded_and_mnist_shaped(name):
    images = outliers(name, 30, seed=4)
    assert images.shape == (30, 28, 28) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, outliers(name, 30, seed=4))
    assert not np.array_equal(images, outliers(name, 30, seed=5)) or name == "blank"


@pytest.mark.parametrize("name", ["letters", "scribbles", "shapes"])
def test_drawn_sets_are_laid_out_like_mnist(name):
    for image in outliers(name, 20, seed=1):
        rows, cols = np.nonzero(image > 30)
        assert np.ptp(rows) <= 21 and np.ptp(cols) <= 21  # within a 20x20 box (+1 for rounding)
        assert max(np.ptp(rows), np.ptp(cols)) >= 15  # and scaled up to it
        mass = center_of_mass(image.astype(float))
        assert np.allclose(mass, 14.0, atol=0.6)


def test_no_digit_look_alikes_among_the_glyphs():
    assert not set(GLYPHS) & DIGIT_LIKE and not set(GLYPHS) & set("0123456789")


def test_layout_of_an_off_centre_drawing():
    page = np.zeros((120, 80), np.uint8)
    page[10:50, 60:70] = 255  # a bar, 40 x 10, in a corner
    image = mnist_layout(page)
    rows, cols = np.nonzero(image > 30)
    assert np.ptp(rows) in (19, 20) and np.ptp(cols) in (4, 5, 6)
    assert np.allclose(center_of_mass(image.astype(float)), 14.0, atol=0.6)
    with pytest.raises(DataError, match="no ink"):
        mnist_layout(np.zeros((5, 5), np.uint8))


def test_unknown_set():
    with pytest.raises(DataError, match="Unknown outlier set 'cats'"):
        outliers("cats", 1)


def test_non_digits_through_the_cli(tmp_path):
    from test_cli import TINY_ENCODER

    from siamindex.build import BuildSettings, build_index
    from siamindex.cli import cli

    build_index(
        BuildSettings(encoder=TINY_ENCODER, index=tmp_path / "idx", splits=("test",),
                      progress=False)
    )  # fmt: skip
    np.save(tmp_path / "shapes.npy", outliers("shapes", 6))
    result = CliRunner().invoke(
        cli,
        ["check", "--class", "3", str(tmp_path / "shapes.npy"), "--index", str(tmp_path / "idx"),
         "--format", "json"],
        catch_exceptions=False,
    )  # fmt: skip
    claims = json.loads(result.output)["results"]
    assert result.exit_code == 0 and len(claims) == 6
    assert all(c["class"] == "3" and isinstance(c["is_member"], bool) for c in claims)
