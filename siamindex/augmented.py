"""``mnist-aug:N``: a deterministic augmented MNIST of any size, generated shard by shard.

The way "infinite MNIST" and MNIST8M were made (Loosli, Canu and Bottou, 2007): each image is a
MNIST train image under a random affine map (rotation, scale, shear, shift) and an elastic
distortion (Simard et al., 2003: a smoothed random displacement field). Nothing is stored or
downloaded: shard ``i`` of ``mnist-aug:N:SEED`` is a pure function of (SEED, i), so any worker on
any machine makes the same bytes, whatever the number of workers. Only one shard is ever in
memory per caller.

NumPy and SciPy only (no TensorFlow): generation runs wherever the engine schedules it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from siamindex.errors import DataError

SHARD_SIZE = 10_000  # images per shard; fixed, so shards never depend on how work is split
PREFIX = "mnist-aug:"
_SPEC = re.compile(r"^mnist-aug:(?P<count>[0-9_]+)(?P<unit>[kKmM]?)(?::(?P<seed>\d+))?$")
_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}

# Distortion ranges, as in the MNIST8M recipe (small affine maps, Simard's elastic field).
ROTATION_DEGREES = 12.0
SCALE_RANGE = (0.85, 1.15)
SHEAR = 0.25
SHIFT_PIXELS = 2.0
ELASTIC_PIXELS = 1.0  # standard deviation of the elastic displacement at its grid points
ELASTIC_GRID = 5  # the field's random values sit on a 5x5 grid (about 7 pixels apart)


def is_spec(text: object) -> bool:
    """Whether a dataset argument names the augmented MNIST (``mnist-aug:...``)."""
    return isinstance(text, str) and text.startswith(PREFIX)


@dataclass(frozen=True)
class AugmentedMnist:
    """``mnist-aug:COUNT[:SEED]``: COUNT distorted MNIST train images, in shards of 10,000.

    Attributes:
        count: images in all.
        seed: the set's seed (0 unless the spec names one).
    """

    count: int
    seed: int = 0

    @classmethod
    def parse(cls, spec: str) -> AugmentedMnist:
        """Read ``mnist-aug:N``, ``mnist-aug:100k``, ``mnist-aug:1M:7`` (N images, seed 7).

        Raises:
            DataError: the spec is malformed or asks for no images.
        """
        match = _SPEC.match(spec.strip())
        if not match:
            raise DataError(
                f"'{spec}' is not an augmented MNIST spec; write mnist-aug:N[:SEED], e.g. "
                "mnist-aug:100000, mnist-aug:1M or mnist-aug:100k:7."
            )
        count = int(match["count"].replace("_", "")) * _UNITS[match["unit"].lower()]
        if count < 1:
            raise DataError(f"'{spec}' asks for no images; give N >= 1, e.g. mnist-aug:100000.")
        return cls(count, int(match["seed"] or 0))

    @property
    def spec(self) -> str:
        return f"{PREFIX}{self.count}:{self.seed}"

    @property
    def shards(self) -> int:
        return -(-self.count // SHARD_SIZE)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """(start, stop) rows of a shard."""
        if not 0 <= shard < self.shards:
            raise IndexError(f"shard {shard} of {self.shards}")
        return shard * SHARD_SIZE, min(self.count, (shard + 1) * SHARD_SIZE)

    def shard(
        self, shard: int, train_images: np.ndarray, train_labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Generate one shard.

        Args:
            shard: which shard, 0 <= shard < ``shards``.
            train_images, train_labels: the MNIST train split the images are made from.

        Returns:
            (images, labels, source_index): (m, 28, 28) uint8, (m,) int64 labels, and (m,) int64
            the MNIST train row each image was made from.
        """
        start, stop = self.shard_rows(shard)
        rng = np.random.default_rng([self.seed, shard])
        source = rng.integers(0, len(train_images), stop - start)
        images = distort(np.asarray(train_images)[source], rng)
        return images, np.asarray(train_labels, dtype=np.int64)[source], source.astype(np.int64)


def distort(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random affine map and elastic field applied to each of (m, 28, 28) uint8 images.

    Vectorised over the batch: the elastic fields are random 5x5 grids interpolated to 28x28
    (a smooth field, as Simard's Gaussian-smoothed one, for a fraction of the cost) and all
    images are resampled bilinearly at once, so a shard of 10,000 takes well under a second.
    """
    count, height, width = images.shape
    angle = np.deg2rad(rng.uniform(-ROTATION_DEGREES, ROTATION_DEGREES, count))
    scale = rng.uniform(*SCALE_RANGE, size=(count, 2))
    shear = rng.uniform(-SHEAR, SHEAR, count)
    shift = rng.uniform(-SHIFT_PIXELS, SHIFT_PIXELS, size=(count, 2))
    coarse = rng.normal(0.0, ELASTIC_PIXELS, size=(2, count, ELASTIC_GRID, ELASTIC_GRID))
    up_rows, up_cols = _interpolation(height, ELASTIC_GRID), _interpolation(width, ELASTIC_GRID)
    field = (up_rows @ coarse @ up_cols.T).astype(np.float32)

    # Output pixel p samples the input at centre + M (p - centre) - shift + elastic field,
    # M = rotation @ shear @ diag(1 / scale): the inverse map of the forward distortion.
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shearing = np.zeros((count, 2, 2))
    shearing[:, 0, 0] = shearing[:, 1, 1] = 1.0
    shearing[:, 0, 1] = shear
    inverse = (rotation @ shearing / scale[:, None, :]).astype(np.float32)
    centre = np.array([(height - 1) / 2, (width - 1) / 2], np.float32)
    grid = np.stack(np.meshgrid(np.arange(height), np.arange(width), indexing="ij"), -1) - centre
    source = grid.reshape(1, -1, 2).astype(np.float32) @ inverse.transpose(0, 2, 1)
    source = source.reshape(count, height, width, 2) + (centre - shift)[:, None, None, :]
    return _bilinear(images, source[..., 0] + field[0], source[..., 1] + field[1])


def _interpolation(size: int, knots: int) -> np.ndarray:
    """(size, knots) weights interpolating ``knots`` evenly spaced values linearly to ``size``."""
    position = np.linspace(0, knots - 1, size)
    low = np.minimum(np.floor(position).astype(int), knots - 2)
    weight = position - low
    matrix = np.zeros((size, knots))
    matrix[np.arange(size), low] = 1 - weight
    matrix[np.arange(size), low + 1] = weight
    return matrix


def _bilinear(images: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Each image sampled at its own (28, 28) real-valued (rows, cols), zero outside, as uint8."""
    count, height, width = images.shape
    stride = width + 2
    padded = np.zeros((count, height + 2, stride), np.float32)  # a zero border outside
    padded[:, 1:-1, 1:-1] = images
    rows = np.clip(rows + 1, 0, height + 1 - 1e-3, dtype=np.float32)
    cols = np.clip(cols + 1, 0, width + 1 - 1e-3, dtype=np.float32)
    top, left = np.floor(rows), np.floor(cols)
    down, right = rows - top, cols - left
    at = top.astype(np.intp) * stride + left.astype(np.intp)
    at += (np.arange(count) * (height + 2) * stride)[:, None, None]
    flat = padded.ravel()
    upper = flat[at] * (1 - right) + flat[at + 1] * right
    lower = flat[at + stride] * (1 - right) + flat[at + stride + 1] * right
    return np.asarray(np.clip(np.rint(upper * (1 - down) + lower * down), 0, 255), np.uint8)
