"""Non-digits for training ("outlier exposure", Hendrycks et al. 2019): images the encoder must
push beyond the margin from every digit class.

They are drawn by other generators, in other fonts and from other pictures than the sets that
measure rejection (``siamindex.outliers``), so that the benchmark still measures images the
encoder never saw: glyphs in matplotlib's STIX and Computer Modern fonts (the benchmark uses
DejaVu and Pillow's font), Greek letters and mathematical signs, Bezier strokes (the benchmark
draws polylines), random polygons and arcs, hatching, blobs of smoothed noise, speckle and
ramps, and patches of matplotlib's sample pictures (the benchmark uses scikit-learn's).
Drawn sets are laid out as MNIST's digits were. ``exposure(n, seed)`` returns (n, 28, 28) uint8.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from siamindex.outliers import DIGIT_LIKE
from siamindex.prepare import mnist_layout

GREEK_AND_SIGNS = "αβγδεζηθκλμνξπρσφψωΓΔΘΛΞΠΣΦΨΩ∑∏∫∂∇√∞≈≠≤≥±∈∩∪⊂⊕⊗→←↑↓↔★♠♣♥♦§¶†‡"
GLYPHS = sorted(
    (set(string.ascii_letters) | set(GREEK_AND_SIGNS) | set("+-=?@#$%&*<>~^"))
    - DIGIT_LIKE
    - {"ρ", "σ", "δ", "θ", "Θ", "∂", "Σ", "∑"}  # written like 9, 6, 0 or 5 by many hands
)


@lru_cache(maxsize=1)
def _fonts() -> tuple:  # type: ignore[type-arg]
    import matplotlib
    from PIL import ImageFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    names = ("STIXGeneral", "STIXGeneralBol", "STIXGeneralItalic", "cmr10", "cmss10", "cmtt10")
    return tuple(ImageFont.truetype(str(folder / f"{name}.ttf"), 56) for name in names)


def _canvas() -> tuple[Any, Any]:
    """A black 96x96 drawing canvas: (image, its ImageDraw)."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (96, 96))
    return canvas, ImageDraw.Draw(canvas)


def glyphs(n: int, rng: np.random.Generator) -> np.ndarray:
    """Letters, Greek letters and signs (no digit look-alikes) in STIX and Computer Modern."""
    fonts = _fonts()
    out: list[np.ndarray] = []
    while len(out) < n:
        canvas, draw = _canvas()
        glyph, font = GLYPHS[rng.integers(len(GLYPHS))], fonts[rng.integers(len(fonts))]
        if glyph not in string.printable:  # Computer Modern has no Greek or signs: use STIX
            font = fonts[rng.integers(3)]
        draw.text((20, 4), glyph, fill=255, font=font)
        image = np.asarray(canvas)
        if image.sum() > 255 * 20:  # skip glyphs the font lacks (drawn as nothing or a dot)
            out.append(mnist_layout(image))
    return np.stack(out)


def _bezier(points: np.ndarray, steps: int = 40) -> list[tuple[float, float]]:
    t = np.linspace(0, 1, steps)[:, None]
    a, b, c, d = points
    curve = (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t**2 * c + t**3 * d
    return [tuple(p) for p in curve]


def strokes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two or three cubic Bezier strokes, 4 to 10 pixels wide (on a 96-pixel canvas); one
    stroke alone is too often a digit."""
    out = []
    for _ in range(n):
        canvas, draw = _canvas()
        for _ in range(int(rng.integers(2, 4))):
            curve = _bezier(rng.uniform(6, 90, size=(4, 2)))
            draw.line(curve, fill=255, width=int(rng.integers(4, 11)), joint="curve")
        out.append(mnist_layout(np.asarray(canvas)))
    return np.stack(out)


def polygons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random polygons of 3 to 8 corners, outlined or filled, and open arcs."""
    out = []
    for _ in range(n):
        canvas, draw = _canvas()
        width = int(rng.integers(4, 10))
        if rng.random() < 0.7:
            corners = [tuple(p) for p in rng.uniform(8, 88, size=(int(rng.integers(3, 9)), 2))]
            fill = 255 if rng.random() < 0.3 else None
            draw.polygon(corners, outline=255, fill=fill, width=width)
        else:
            start = float(rng.uniform(0, 360))
            box = (12, 12 + rng.uniform(0, 30), 84, 84 - rng.uniform(0, 30))
            draw.arc(box, start, start + float(rng.uniform(120, 240)), fill=255, width=width)
        out.append(mnist_layout(np.asarray(canvas)))
    return np.stack(out)


def textures(n: int, rng: np.random.Generator) -> np.ndarray:
    """Whole-image textures: hatching, blobs of smoothed noise, speckle, smooth ramps."""
    from scipy.ndimage import gaussian_filter

    out = np.zeros((n, 28, 28))
    rows, cols = np.mgrid[0:28, 0:28]
    for i, kind in enumerate(rng.integers(4, size=n)):
        if kind == 0:
            angle, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
            wave = np.sin((rows * np.cos(angle) + cols * np.sin(angle)) * 2 * np.pi / period)
            out[i] = (wave > rng.uniform(0.3, 0.9)) * rng.uniform(100, 255)
        elif kind == 1:
            field = gaussian_filter(rng.normal(size=(28, 28)), rng.uniform(1.5, 4))
            out[i] = (field > np.quantile(field, rng.uniform(0.6, 0.9))) * 255.0
        elif kind == 2:
            out[i] = (rng.random((28, 28)) < rng.uniform(0.02, 0.4)) * rng.uniform(60, 255)
        else:  # a smooth ramp (flat images are left to the benchmark's blank set)
            angle = rng.uniform(0, 2 * np.pi)
            ramp = rows * np.cos(angle) + cols * np.sin(angle)
            out[i] = 255 * (ramp - ramp.min()) / np.ptp(ramp) * rng.uniform(0.3, 1)
    return out.astype(np.uint8)


@lru_cache(maxsize=1)
def _pictures() -> tuple[np.ndarray, ...]:
    import matplotlib
    from PIL import Image

    folder = Path(matplotlib.get_data_path()) / "sample_data"
    pictures = [np.asarray(Image.open(folder / "grace_hopper.jpg").convert("L"), np.float64)]
    for name in ("jacksboro_fault_dem.npz", "topobathy.npz"):
        with np.load(folder / name) as stored:
            array = np.asarray(stored[stored.files[0]], np.float64)
        pictures.append(255 * (array - array.min()) / max(np.ptp(array), 1e-9))
    return tuple(pictures)


def picture_patches(n: int, rng: np.random.Generator) -> np.ndarray:
    """28x28 patches of matplotlib's sample pictures and terrain maps, either polarity."""
    from PIL import Image

    pictures = _pictures()
    out = []
    for _ in range(n):
        picture = pictures[rng.integers(len(pictures))]
        side = int(min(28 * rng.uniform(1, 5), *picture.shape))
        top = int(rng.integers(0, picture.shape[0] - side + 1))
        left = int(rng.integers(0, picture.shape[1] - side + 1))
        patch = Image.fromarray(picture[top : top + side, left : left + side].astype(np.uint8))
        image = np.asarray(patch.resize((28, 28), Image.Resampling.BILINEAR))
        out.append(255 - image if rng.random() < 0.5 else image)
    return np.stack(out)


KINDS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "glyphs": glyphs,
    "strokes": strokes,
    "polygons": polygons,
    "textures": textures,
    "picture_patches": picture_patches,
}
SHARES = {"glyphs": 0.35, "strokes": 0.2, "polygons": 0.2, "textures": 0.1, "picture_patches": 0.15}


def exposure(n: int, seed: int = 0) -> np.ndarray:
    """``n`` training non-digits of every kind, in SHARES, shuffled: (n, 28, 28) uint8."""
    rng = np.random.default_rng(seed)
    counts = {kind: int(round(share * n)) for kind, share in SHARES.items()}
    counts["glyphs"] += n - sum(counts.values())
    images = np.concatenate([KINDS[kind](count, rng) for kind, count in counts.items()])
    return images[rng.permutation(len(images))]
