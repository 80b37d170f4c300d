"""Corrupted digits for measuring robustness: the 15 corruptions of MNIST-C, plus thinner and
thicker strokes and low resolution.

After Mu & Gilmer (2019), "MNIST-C: A Robustness Benchmark for Computer Vision", with each
corruption at the severity MNIST-C published; written here with NumPy, SciPy and Pillow
(scikit-image only for Canny edges), so the numbers are ours, not MNIST-C's files. Every
function maps (n, 28, 28) uint8 images and a seeded generator to (n, 28, 28) uint8 images;
the same seed gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from siamindex.errors import DataError, MissingExtra

Corruption = Callable[[np.ndarray, np.random.Generator], np.ndarray]
CENTRE = 13.5  # the middle of a 28x28 image, in pixel coordinates


def _unit(images: np.ndarray) -> np.ndarray:
    return np.asarray(images, np.float64) / 255.0


def _bytes(x: np.ndarray) -> np.ndarray:
    return np.asarray(np.round(np.clip(x, 0.0, 1.0) * 255.0), np.uint8)


def shot_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson noise with 3 expected photons at full ink (MNIST-C severity 5)."""
    return _bytes(rng.poisson(_unit(images) * 3.0) / 3.0)


def impulse_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Salt and pepper on 17% of the pixels."""
    x = _unit(images)
    hit = rng.random(x.shape) < 0.17
    return _bytes(np.where(hit, rng.random(x.shape) < 0.5, x))


def glass_blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (sigma 0.7), pixels swapped with a neighbour within 1 (twice), blur again."""
    from scipy.ndimage import gaussian_filter

    x = gaussian_filter(_unit(images), sigma=(0, 0.7, 0.7))
    rows = np.arange(len(x))
    for _ in range(2):
        for h in range(27, 1, -1):
            for w in range(27, 1, -1):
                swap = rows[rng.random(len(x)) < 0.5]
                dy, dx = rng.integers(-1, 1, size=(2, len(swap)))
                here = x[swap, h, w].copy()
                x[swap, h, w] = x[swap, h + dy, w + dx]
                x[swap, h + dy, w + dx] = here
    return _bytes(gaussian_filter(x, sigma=(0, 0.7, 0.7)))


def motion_blur(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A one-sided Gaussian streak (radius 10, sigma 3) at a random angle within 45 degrees."""
    from scipy.ndimage import convolve

    x = _unit(images)
    out = np.empty_like(x)
    steps = np.arange(0, 11)
    weights = np.exp(-(steps**2) / (2 * 3.0**2))
    for i, angle in enumerate(np.deg2rad(rng.uniform(-45, 45, size=len(x)))):
        kernel = np.zeros((21, 21))
        rows = np.round(10 - steps * np.sin(angle)).astype(int)
        cols = np.round(10 + steps * np.cos(angle)).astype(int)
        np.add.at(kernel, (rows, cols), weights)
        out[i] = convolve(x[i], kernel / kernel.sum(), mode="constant")
    return _bytes(out)


def _warp(images: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """Each image through its 2x2 ``matrices[i]`` (output -> input), about the centre."""
    from scipy.ndimage import affine_transform

    x = _unit(images)
    out = np.empty_like(x)
    centre = np.array([CENTRE, CENTRE])
    for i, matrix in enumerate(matrices):
        offset = centre - matrix @ centre
        out[i] = affine_transform(x[i], matrix, offset=offset, order=1, mode="constant")
    return _bytes(out)


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.where(rng.random(n) < 0.5, -1.0, 1.0)


def shear(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal shear of 0.4, in a random direction."""
    k = 0.4 * _signs(rng, len(images))
    return _warp(images, np.array([[[1.0, 0.0], [s, 1.0]] for s in k]))


def scale(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shrunk to 70% about the centre."""
    return _warp(images, np.repeat([np.eye(2) / 0.7], len(images), axis=0))


def rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotated by 0.4 radians (23 degrees), in a random direction."""
    angles = 0.4 * _signs(rng, len(images))
    cos, sin = np.cos(angles), np.sin(angles)
    return _warp(images, np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1))


def brightness(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half the full scale added to every pixel (HSV value + 0.5; gray stays gray)."""
    return _bytes(_unit(images) + 0.5)


def translate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Moved 3 pixels along each axis, each in a random direction."""
    from scipy.ndimage import shift

    x = _unit(images)
    moves = 3.0 * np.stack([_signs(rng, len(x)), _signs(rng, len(x))], 1)
    return _bytes(np.stack([shift(x[i], moves[i], order=0) for i in range(len(x))]))


def stripe(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The 7 leftmost and 7 rightmost columns inverted."""
    x = np.array(images, np.uint8)
    x[:, :, :7] = 255 - x[:, :, :7]
    x[:, :, 21:] = 255 - x[:, :, 21:]
    return x


def _plasma(rng: np.random.Generator, size: int = 32, decay: float = 1.4) -> np.ndarray:
    """A diamond-square fractal height map in 0..1 (fog), size a power of two."""
    grid = np.zeros((size, size))
    step, wibble = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = corners + np.roll(corners, -1, 0)
        square = square + np.roll(square, -1, 1)
        grid[half:size:step, half:size:step] = square / 4 + rng.uniform(
            -wibble, wibble, square.shape
        )
        centres, corners = grid[half:size:step, half:size:step], grid[0:size:step, 0:size:step]
        across = centres + np.roll(centres, 1, 0) + corners + np.roll(corners, -1, 1)
        grid[0:size:step, half:size:step] = across / 4 + rng.uniform(-wibble, wibble, across.shape)
        down = centres + np.roll(centres, 1, 1) + corners + np.roll(corners, -1, 0)
        grid[half:size:step, 0:size:step] = down / 4 + rng.uniform(-wibble, wibble, down.shape)
        step, wibble = half, wibble / decay
    grid -= grid.min()
    return np.asarray(grid / max(grid.max(), 1e-12))


def fog(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A fractal haze three times the ink's strength, the whole rescaled to keep the maximum."""
    x = _unit(images)
    haze = np.stack([_plasma(rng)[:28, :28] for _ in range(len(x))])
    peak = x.max(axis=(1, 2), keepdims=True)
    return _bytes((x + 3.0 * haze) * peak / (peak + 3.0))


def spatter(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Mud blots (gray 63) where smoothed noise runs high."""
    from scipy.ndimage import gaussian_filter

    x = _unit(images)
    liquid = gaussian_filter(rng.normal(0.65, 0.3, size=x.shape), sigma=(0, 1, 1))
    mask = gaussian_filter((liquid > 0.65).astype(np.float64), sigma=(0, 1.5, 1.5))
    mask[mask < 0.8] = 0.0
    return _bytes(x * (1 - mask) + (63 / 255) * mask)


def _segment_ink(rows: np.ndarray, cols: np.ndarray, r0, c0, r1, c1) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Anti-aliased ink of a segment: 1 on it, fading to 0 at 2.3 pixels (MNIST-C's decay)."""
    d_r, d_c = r1 - r0, c1 - c0
    length2 = max(d_r * d_r + d_c * d_c, 1e-12)
    t = np.clip(((rows - r0) * d_r + (cols - c0) * d_c) / length2, 0, 1)
    distance = np.hypot(rows - (r0 + t * d_r), cols - (c0 + t * d_c))
    return np.asarray(np.clip(np.log(np.maximum(1 - distance / 2.3, 1e-12)) + 1, 0, 1))


_ROWS, _COLS = np.mgrid[0:28, 0:28].astype(np.float64)


def dotted_line(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A dashed line from the left edge to the right edge (dashes 2 pixels on, 2 off)."""
    x = _unit(images)
    dashes = (np.arange(28) // 2) % 2 == 1
    for i in range(len(x)):
        r0, r1 = rng.integers(0, 27, size=2)
        ink = _segment_ink(_ROWS, _COLS, r0, 0, r1, 27)
        ink[:, ~dashes] = 0
        x[i] = np.maximum(x[i], ink)
    return _bytes(x)


def zigzag(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A zigzag (teeth 2 pixels long and 2 high) across the image."""
    x = _unit(images)
    for i in range(len(x)):
        r0 = float(rng.integers(0, 27))
        r1 = r0 + float(rng.integers(-5, 5))
        cols = np.arange(2.0, 26.0, 2.0)
        rows = r0 + (r1 - r0) * (cols - 2) / 23 + np.where(np.arange(len(cols)) % 2, 2.0, -2.0)
        for k in range(1, len(cols)):
            ink = _segment_ink(_ROWS, _COLS, rows[k - 1], cols[k - 1], rows[k], cols[k])
            x[i] = np.maximum(x[i], ink)
    return _bytes(x)


def canny_edges(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Only the Canny edges of the strokes (scikit-image, sigma 1)."""
    try:
        from skimage.feature import canny
    except ImportError:
        raise MissingExtra(
            "canny_edges needs scikit-image; install it with: pip install 'siamindex[bench]'"
        ) from None
    edges = [canny(image / 255.0) for image in images]  # type: ignore[no-untyped-call]
    return np.stack(edges).astype(np.uint8) * 255


def thinner(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strokes eroded by a 2x2 minimum filter."""
    from scipy.ndimage import grey_erosion

    return np.asarray(grey_erosion(np.asarray(images, np.uint8), size=(1, 2, 2)), np.uint8)


def thicker(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Strokes dilated by a 2x2 maximum filter."""
    from scipy.ndimage import grey_dilation

    return np.asarray(grey_dilation(np.asarray(images, np.uint8), size=(1, 2, 2)), np.uint8)


def low_resolution(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Half resolution: down to 14x14 (box filter), then back up to 28x28 (bilinear)."""
    from PIL import Image

    small = [Image.fromarray(image).resize((14, 14), Image.Resampling.BOX) for image in images]
    return np.stack([np.asarray(s.resize((28, 28), Image.Resampling.BILINEAR)) for s in small])


CORRUPTIONS: dict[str, Corruption] = {
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "shear": shear,
    "scale": scale,
    "rotate": rotate,
    "brightness": brightness,
    "translate": translate,
    "stripe": stripe,
    "fog": fog,
    "spatter": spatter,
    "dotted_line": dotted_line,
    "zigzag": zigzag,
    "canny_edges": canny_edges,
    "thinner": thinner,
    "thicker": thicker,
    "low_resolution": low_resolution,
}


def corrupt(images: np.ndarray, name: str, seed: int = 0) -> np.ndarray:
    """Apply the named corruption to (n, 28, 28) uint8 images, seeded: (n, 28, 28) uint8.

    Raises:
        DataError: no corruption has that name.
    """
    if name not in CORRUPTIONS:
        raise DataError(f"Unknown corruption '{name}'; choose from {', '.join(CORRUPTIONS)}.")
    return CORRUPTIONS[name](np.asarray(images, np.uint8), np.random.default_rng(seed))
