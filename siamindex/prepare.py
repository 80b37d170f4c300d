"""Real images in, MNIST layout out: what MNIST's makers did to each digit, done to any drawing.

``prepare(gray, "mnist")`` takes an (h, w) grayscale image of any size and either polarity and
returns a (28, 28) uint8 image laid out as MNIST's digits are: light ink on black, the ink's
bounding box scaled (aspect kept, anti-aliased) so that its longer side is 20 pixels, centred by
its centre of mass (at pixel 14, 14, as MNIST's). The background level is estimated from the
image's border and removed, and specks far smaller than the drawing are dropped, so that a photo
of a page works as well as a clean drawing. ``"auto"`` does this to anything that is not already
a 28x28 light-on-dark image; ``"none"`` only checks the size.
"""

from __future__ import annotations

import numpy as np

from siamindex.defaults import PREPARE_MODES
from siamindex.errors import DataError

__all__ = ["PREPARE_MODES", "check_mode", "prepare", "is_mnist_like", "ink_of", "mnist_layout"]
BOX = 20  # MNIST: the longer side of the ink's bounding box, in pixels
SIZE = 28
MASS_AT = 14  # MNIST: the pixel the centre of mass is moved to
SPECK = 0.05  # ink components smaller than this share of the largest are noise


def prepare(gray: np.ndarray, mode: str = "auto") -> np.ndarray:
    """An (h, w) uint8 grayscale image as a (28, 28) uint8 MNIST-layout image.

    Raises:
        DataError: unknown mode; with "none", an image that is not 28x28; with "mnist" or
            "auto", an image with no ink distinct from its background.
    """
    gray = np.asarray(gray, np.uint8)
    check_mode(mode)
    if mode == "none" or (mode == "auto" and is_mnist_like(gray)):
        if gray.shape != (SIZE, SIZE):
            raise DataError(
                f"The image is {gray.shape[1]}x{gray.shape[0]}, not 28x28; use --prepare mnist "
                "(or auto) to lay it out as MNIST."
            )
        return gray
    return mnist_layout(ink_of(gray))


def check_mode(mode: str) -> str:
    """``mode`` itself, if it is a ``--prepare`` mode.

    Raises:
        DataError: it is not.
    """
    if mode not in PREPARE_MODES:
        raise DataError(f"Unknown --prepare mode '{mode}'; use {', '.join(PREPARE_MODES)}.")
    return mode


def is_mnist_like(gray: np.ndarray) -> bool:
    """Already 28x28 with a dark background (light ink on dark, as MNIST)."""
    return gray.shape == (SIZE, SIZE) and float(np.median(_border(gray))) < 128


def _border(gray: np.ndarray) -> np.ndarray:
    width = max(1, min(gray.shape) // 14)
    return np.concatenate(
        [
            gray[:width].ravel(),
            gray[-width:].ravel(),
            gray[:, :width].ravel(),
            gray[:, -width:].ravel(),
        ]
    )


def _dark_ink(x: np.ndarray, background: float) -> bool:
    """Whether the ink is darker than the paper: the image reaches farther below its background
    than above it (robust extremes, so a few specks do not decide). On a gray background, as
    a brightened scan has, only this tells light ink from dark."""
    below = background - float(np.percentile(x, 0.5))
    above = float(np.percentile(x, 99.5)) - background
    if below == above:  # nothing either way (e.g. a flat image): the paper's level decides
        return background >= 128
    return below > above


def ink_of(gray: np.ndarray) -> np.ndarray:
    """The ink as light on black, background removed and specks dropped: (h, w) uint8.

    The background is the border's median; ink darker than it (dark ink on light paper) is
    inverted. Pixels count as ink above the border's noise (4 robust standard deviations) and
    a quarter of the ink's strength; components under 5% of the largest one's size are dropped
    as specks.

    Raises:
        DataError: nothing stands out from the background.
    """
    from scipy.ndimage import binary_dilation, label, median_filter

    x = gray.astype(np.float64)
    border = _border(gray).astype(np.float64)
    background = float(np.median(border))
    if _dark_ink(x, background):
        x, border, background = 255 - x, 255 - border, 255 - background
    ink = np.clip(x - background, 0, None)
    noise = 1.4826 * float(np.median(np.abs(border - background)))
    # The ink's strength: the brightest 3x3 neighbourhood (a lone speck cannot set it).
    strong = float(median_filter(ink, size=3).max()) or float(ink.max())
    threshold = max(4 * noise, 0.25 * strong, 1.0)
    mask = ink > threshold
    components, count = label(mask)
    if count == 0:
        raise DataError(
            "The image has no ink that stands out from its background; pass a drawing, or "
            "--prepare none to use it exactly as it is."
        )
    sizes = np.bincount(components.ravel())[1:]
    keep = np.flatnonzero(sizes >= SPECK * sizes.max()) + 1
    kept = np.isin(components, keep)
    # Keep the strokes' fainter edges too: above half the threshold (and the noise), next to a
    # stroke.
    near = binary_dilation(kept, iterations=2)
    ink = np.where(near & (ink > max(threshold / 2, 4 * noise)), ink, 0)
    return np.asarray(np.round(255 * ink / max(ink.max(), 1e-9)), np.uint8)


def mnist_layout(image: np.ndarray) -> np.ndarray:
    """MNIST's layout of a light-on-dark (h, w) drawing: the ink's bounding box scaled (aspect
    kept, anti-aliased) so its longer side is 20 pixels, centred by its centre of mass in 28x28.

    Raises:
        DataError: the image has no ink.
    """
    from PIL import Image
    from scipy.ndimage import center_of_mass, shift

    ink = np.argwhere(np.asarray(image) > 0)
    if not len(ink):
        raise DataError("The image has no ink to lay out.")
    (top, left), (bottom, right) = ink.min(0), ink.max(0) + 1
    crop = Image.fromarray(np.asarray(image, np.uint8)[top:bottom, left:right])
    factor = BOX / max(crop.size)
    size = (max(1, round(crop.size[0] * factor)), max(1, round(crop.size[1] * factor)))
    small = np.asarray(crop.resize(size, Image.Resampling.LANCZOS), np.float64)
    canvas = np.zeros((SIZE, SIZE))
    row, col = (SIZE - small.shape[0]) // 2, (SIZE - small.shape[1]) // 2
    canvas[row : row + small.shape[0], col : col + small.shape[1]] = small
    # MNIST moved each digit by whole pixels so that its centre of mass is at pixel (14, 14):
    # the train split's centres all lie within 13.5..14.5.
    mass_row, mass_col = center_of_mass(np.maximum(canvas, 0) + 1e-9)
    moves = (round(MASS_AT - mass_row), round(MASS_AT - mass_col))
    centred = shift(canvas, moves, order=0, mode="constant")
    return np.asarray(np.round(np.clip(centred, 0, 255)), np.uint8)
