"""Corruptions: every one keeps shape and type, is seeded, and changes what it should."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from siamindex.corruptions import CORRUPTIONS, corrupt
from siamindex.errors import DataError

MNIST_C = {
    "shot_noise", "impulse_noise", "glass_blur", "motion_blur", "shear", "scale", "rotate",
    "brightness", "translate", "stripe", "fog", "spatter", "dotted_line", "zigzag", "canny_edges",
}  # fmt: skip


@pytest.fixture(scope="module")
def digits(mnist_test):
    return mnist_test.images[:40]


def test_all_of_mnist_c_and_the_stroke_and_resolution_shifts_are_there():
    assert MNIST_C | {"thinner", "thicker", "low_resolution"} == set(CORRUPTIONS)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_is_seeded_and_keeps_the_layout(digits, name):
    out = corrupt(digits, name, seed=3)
    assert out.shape == digits.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, corrupt(digits, name, seed=3))
    changed = np.mean(out.astype(int) != digits.astype(int), axis=(1, 2))
    assert np.all(changed > 0.005), f"{name} leaves some images almost as they were"


def test_corruptions_do_what_their_names_say(digits):
    bright = corrupt(digits, "brightness")
    assert bright.min() >= 127  # half the scale added everywhere
    striped = corrupt(digits, "stripe")
    np.testing.assert_array_equal(striped[:, :, :7], 255 - digits[:, :, :7])
    np.testing.assert_array_equal(striped[:, :, 7:21], digits[:, :, 7:21])
    ink = (digits > 0).sum(axis=(1, 2))
    assert np.all((corrupt(digits, "thinner") > 0).sum(axis=(1, 2)) < ink)
    assert np.all((corrupt(digits, "thicker") > 0).sum(axis=(1, 2)) > ink)
    small = corrupt(digits, "scale")
    assert np.all((small > 0).sum(axis=(1, 2)) < ink)
    assert set(np.unique(corrupt(digits, "canny_edges"))) <= {0, 255}
    moved = corrupt(digits, "translate")  # whole pixels: the ink is moved, not changed
    assert np.all(
        np.abs(moved.astype(int).sum(axis=(1, 2)) - digits.astype(int).sum(axis=(1, 2)))
        <= 0.35 * digits.astype(int).sum(axis=(1, 2))
    )
    # Noise corrupts different pixels with different seeds.
    assert not np.array_equal(corrupt(digits, "shot_noise", 1), corrupt(digits, "shot_noise", 2))


def test_unknown_corruption():
    with pytest.raises(DataError, match="Unknown corruption 'snow'; choose from shot_noise"):
        corrupt(np.zeros((1, 28, 28), np.uint8), "snow")


def test_corrupted_digits_through_the_cli(tmp_path, digits):
    from test_cli import TINY_ENCODER

    from siamindex.build import BuildSettings, build_index
    from siamindex.cli import cli

    build_index(
        BuildSettings(encoder=TINY_ENCODER, index=tmp_path / "idx", splits=("test",),
                      progress=False)
    )  # fmt: skip
    np.save(tmp_path / "fog.npy", corrupt(digits[:5], "fog"))
    result = CliRunner().invoke(
        cli,
        ["query", str(tmp_path / "fog.npy"), "--index", str(tmp_path / "idx"), "-k", "2",
         "--format", "json"],
        catch_exceptions=False,
    )  # fmt: skip
    answers = json.loads(result.output)
    assert result.exit_code == 0 and len(answers) == 5
    assert all(len(a["matches"]) == 2 and "predicted" in a for a in answers)
