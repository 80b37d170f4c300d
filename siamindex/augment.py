"""Training-time augmentation: Keras preprocessing layers that vary how a digit was written and
scanned, so the encoder learns the digit and not MNIST's one scanner.

``augmenter()`` returns a layer from (n, 28, 28, 1) float32 pixel values in 0..255 to the same,
active only with ``training=True``. It is applied to training batches only; the saved encoder
never contains it. Half of each batch goes through the families below, each drawn per image
with its own chance; the other half stays clean:

* pen: thinner or thicker strokes (grey erosion / dilation), or hollow ones (the outline a
  double-edged pen or an edge filter leaves);
* affine: rotation, zoom, translation and shear (Keras layers);
* elastic: a smooth random displacement field (our own layer; see ``RandomElastic``);
* blur: Gaussian blur (Keras ``RandomGaussianBlur``);
* paper: an uneven background (a brightness ramp, blotchy stains) under dimmer ink;
* lines: ruled lines or stray strokes across the paper;
* noise: Gaussian noise and salt-and-pepper specks.

These are families of variation, written with other code and other parameters than the
corruptions that the robustness benchmark measures (``siamindex.corruptions``).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import layers, ops

MAX_PIXEL = 255.0


class _PerImage(layers.Layer):  # type: ignore[misc]
    """A layer that changes each image of a batch with probability ``rate``, and only while
    training."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.rate = float(rate)
        self.seed_generator = keras.random.SeedGenerator(seed)

    def chosen(self, images: Any) -> Any:
        """(n, 1, 1, 1) 1.0 for the images to change, 0.0 for the rest."""
        draw = keras.random.uniform(
            (ops.shape(images)[0], 1, 1, 1), seed=self.seed_generator, dtype=images.dtype
        )
        return ops.cast(draw < self.rate, images.dtype)

    def change(self, images: Any) -> Any:
        raise NotImplementedError

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        chosen = self.chosen(images)
        return chosen * self.change(images) + (1.0 - chosen) * images

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def thicker(images: Any) -> Any:
    """Grey dilation by a 3x3 square: every stroke a pixel wider on each side."""
    return ops.max_pool(images, 3, strides=1, padding="same")


def thinner(images: Any) -> Any:
    """Grey erosion by a 2x2 square: strokes a pixel thinner (3x3 wipes out thin ones)."""
    return -ops.max_pool(-images, 2, strides=1, padding="same")


def hollow(images: Any) -> Any:
    """The outline of each stroke: the ring its dilation adds around it (inside left dark)."""
    return ops.clip(2.0 * (thicker(images) - images), 0.0, MAX_PIXEL)


class RandomPen(_PerImage):
    """Thinner, thicker or hollow strokes, one of the three at random."""

    def change(self, images: Any) -> Any:
        kind = keras.random.randint((ops.shape(images)[0], 1, 1, 1), 0, 3, seed=self.seed_generator)
        return ops.where(
            kind == 0, thinner(images), ops.where(kind == 1, thicker(images), hollow(images))
        )


class RandomElastic(_PerImage):
    """A smooth random displacement of every pixel (as the "infinite MNIST" sets were made):
    a coarse 4x4 field of displacements, ``pixels`` standard deviation, upsampled bilinearly,
    then bilinear sampling.

    (Keras's own ``RandomElasticTransform`` repeats one image across a batch when it runs
    inside ``tf.data``, and ``ops.image.map_coordinates`` needs a known batch size there.)
    """

    def __init__(self, rate: float, pixels: float = 1.5, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.pixels = float(pixels)

    def change(self, images: Any) -> Any:
        n = ops.shape(images)[0]
        coarse = keras.random.normal((n, 4, 4, 2), seed=self.seed_generator) * self.pixels
        field = ops.image.resize(coarse, (28, 28), interpolation="bilinear")
        grid = ops.cast(ops.arange(28), images.dtype)
        rows = grid[None, :, None] + field[..., 0]
        cols = grid[None, None, :] + field[..., 1]
        flat = ops.reshape(images, (n, 28 * 28))
        top, left = ops.floor(rows), ops.floor(cols)
        out = ops.zeros_like(flat)
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            r, c = top + dy, left + dx
            weight = (1.0 - ops.abs(rows - r)) * (1.0 - ops.abs(cols - c))
            inside = ops.cast((r >= 0) & (r <= 27) & (c >= 0) & (c <= 27), images.dtype)
            at = ops.cast(ops.clip(r, 0, 27) * 28 + ops.clip(c, 0, 27), "int32")
            taken = ops.take_along_axis(flat, ops.reshape(at, (n, 28 * 28)), axis=1)
            out = out + taken * ops.reshape(weight * inside, (n, 28 * 28))
        return ops.reshape(out, ops.shape(images))


def _smooth_field(n: Any, coarse: int, seed: Any, dtype: Any) -> Any:
    """(n, 28, 28, 1) smooth random values in 0..1: a coarse grid upsampled bilinearly."""
    grid = keras.random.uniform((n, coarse, coarse, 1), seed=seed, dtype=dtype)
    return ops.image.resize(grid, (28, 28), interpolation="bilinear")


class RandomPaper(_PerImage):
    """An uneven paper under the ink: a brightness ramp across the image, blotchy stains, or
    both, up to ``level``, added to the ink (itself dimmed by up to 30%)."""

    def __init__(self, rate: float, level: float = 100.0, **kwargs: Any) -> None:
        super().__init__(rate, **kwargs)
        self.level = float(level)

    def change(self, images: Any) -> Any:
        n = ops.shape(images)[0]
        grid = ops.cast(ops.arange(28), images.dtype) / 27.0
        rows, cols = grid[None, :, None, None], grid[None, None, :, None]
        slope = keras.random.uniform((n, 3, 1, 1, 1), -1.0, 1.0, seed=self.seed_generator)
        ramp = slope[:, 0] * rows + slope[:, 1] * cols + slope[:, 2]
        stains = _smooth_field(n, 6, self.seed_generator, images.dtype)
        mix = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator, dtype=images.dtype)
        paper = mix * _unit_range(ramp) + (1.0 - mix) * _unit_range(stains)
        level = keras.random.uniform((n, 1, 1, 1), 0.0, self.level, seed=self.seed_generator)
        ink = keras.random.uniform((n, 1, 1, 1), 0.7, 1.0, seed=self.seed_generator)
        return ops.clip(paper * level + images * ink, 0.0, MAX_PIXEL)


def _unit_range(x: Any) -> Any:
    x = x - ops.min(x, axis=(1, 2, 3), keepdims=True)
    return x / ops.maximum(ops.max(x, axis=(1, 2, 3), keepdims=True), 1e-6)


class RandomLines(_PerImage):
    """Ruled lines or stray pen strokes across the paper: one or two straight lines, about 1
    to 2.5 pixels wide, at any angle and grey level, anti-aliased."""

    def change(self, images: Any) -> Any:
        n = ops.shape(images)[0]
        grid = ops.cast(ops.arange(28), images.dtype) - 13.5
        rows, cols = grid[None, :, None, None], grid[None, None, :, None]
        out = images
        for second in (False, True):
            draw = keras.random.uniform((n, 5, 1, 1, 1), seed=self.seed_generator)
            angle = draw[:, 0] * np.pi
            offset = (draw[:, 1] - 0.5) * 20.0
            width = 0.5 + draw[:, 2] * 1.0
            level = 100.0 + draw[:, 3] * 155.0
            shown = ops.cast(draw[:, 4] < 0.5, images.dtype) if second else 1.0
            distance = ops.abs(rows * ops.cos(angle) + cols * ops.sin(angle) - offset)
            line = level * ops.clip(width + 0.5 - distance, 0.0, 1.0) * shown
            out = ops.maximum(out, line)
        return out


class RandomNoise(_PerImage):
    """Gaussian noise (standard deviation up to ``sigma``) and salt-and-pepper specks on up
    to ``specks`` of the pixels."""

    def __init__(self, rate: float, sigma: float = 40.0, specks: float = 0.15, **kwargs: Any):
        super().__init__(rate, **kwargs)
        self.sigma = float(sigma)
        self.specks = float(specks)

    def change(self, images: Any) -> Any:
        n = ops.shape(images)[0]
        shape = ops.shape(images)
        sigma = keras.random.uniform((n, 1, 1, 1), 0.0, self.sigma, seed=self.seed_generator)
        noisy = images + sigma * keras.random.normal(shape, seed=self.seed_generator)
        share = keras.random.uniform((n, 1, 1, 1), 0.0, self.specks, seed=self.seed_generator)
        hit = keras.random.uniform(shape, seed=self.seed_generator) < share
        salt = keras.random.uniform(shape, seed=self.seed_generator) < 0.5
        noisy = ops.where(hit, ops.cast(salt, images.dtype) * MAX_PIXEL, noisy)
        return ops.clip(noisy, 0.0, MAX_PIXEL)


class Augmented(layers.Layer):  # type: ignore[misc]
    """``inner`` (the families above) applied to the first ``share`` of each batch (batches
    are shuffled, so that is a random share); the rest stay clean, so the encoder keeps
    learning MNIST's own digits as sharply as without augmentation."""

    def __init__(self, share: float, inner: keras.Sequential, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.share = float(share)
        self.inner = inner

    def call(self, images: Any, training: bool = True) -> Any:
        if not training:
            return images
        count = ops.cast(ops.shape(images)[0], "float32") * self.share
        cut = ops.cast(ops.round(count), "int32")
        return ops.concatenate([self.inner(images[:cut], training=True), images[cut:]], axis=0)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def augmenter(seed: int = 0, share: float = 0.5) -> layers.Layer:
    """The training augmentation, seeded: a ``share`` of the images go through every family
    (each with its own chance), the rest are left as they are."""
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    families = keras.Sequential(
        [
            RandomPen(0.2, seed=seed, name="pen"),
            layers.RandomRotation(0.03, seed=seed + 1, name="rotate", **fill),
            layers.RandomZoom((-0.15, 0.15), seed=seed + 2, name="zoom", **fill),
            layers.RandomTranslation(0.08, 0.08, seed=seed + 3, name="translate", **fill),
            layers.RandomShear(0.1, 0.05, seed=seed + 4, name="shear", **fill),
            RandomElastic(0.2, seed=seed + 5, name="elastic"),
            # Draws whether to blur each image itself: factor is that chance.
            layers.RandomGaussianBlur(
                (0.2, 0.2), kernel_size=5, sigma=(0.3, 1.0), seed=seed + 7, name="blur"
            ),
            RandomPaper(0.2, seed=seed + 9, name="paper"),
            RandomLines(0.15, seed=seed + 12, name="lines"),
            RandomNoise(0.2, seed=seed + 10, name="noise"),
        ],
        name="families",
    )
    return Augmented(share, families, name="augmentation")
