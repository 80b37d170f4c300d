"""Images that are not digits, for measuring open-set rejection ("no match").

Each set is generated, seeded, offline: letters and symbols rendered with the fonts that Pillow
and (when installed) matplotlib ship, random scribbles, geometric shapes, noise, blank and
near-blank images, and patches of the photographs scikit-learn ships. Drawn sets are laid out as
MNIST's digits were (light on dark, the ink scaled into a 20x20 box, centred by its centre of
mass in 28x28), so that layout alone does not give them away. Every function returns
(n, 28, 28) uint8.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from pathlib import Path

import numpy as np

from siamindex.errors import DataError
from siamindex.prepare import mnist_layout

Outliers = Callable[[int, np.random.Generator], np.ndarray]

# Glyphs that are written like a digit (O and 0, l and 1, S and 5, ...): a "yes" for them is no
# error, so they are left out of the letters set.
DIGIT_LIKE = set("OoQDlIiJjZzSsBbGgqT|!/\\()[]{}")
GLYPHS = sorted((set(string.ascii_letters) | set("+-=×÷?@#$%&*<>~^")) - DIGIT_LIKE)


def _fonts(size: int) -> list:  # type: ignore[type-arg]
    from PIL import ImageFont

    fonts = [ImageFont.load_default(size=size)]
    try:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        paths = sorted(p for p in folder.glob("DejaVu*.ttf") if "Display" not in p.name)
        fonts += [ImageFont.truetype(str(p), size) for p in paths]  # Display: a few glyphs only
    except ImportError:  # matplotlib is optional: Pillow's own font still gives a set
        pass
    return fonts


def letters(n: int, rng: np.random.Generator) -> np.ndarray:
    """Letters and symbols (no digit look-alikes), each in a random font, laid out as MNIST."""
    from PIL import Image, ImageDraw

    fonts = _fonts(48)
    out = []
    for _ in range(n):
        glyph, font = GLYPHS[rng.integers(len(GLYPHS))], fonts[rng.integers(len(fonts))]
        canvas = Image.new("L", (96, 96))
        ImageDraw.Draw(canvas).text((24, 16), glyph, fill=255, font=font)
        if not np.asarray(canvas).any():  # a font without this glyph: Pillow's own has them all
            ImageDraw.Draw(canvas).text((24, 16), glyph, fill=255, font=fonts[0])
        out.append(mnist_layout(np.asarray(canvas)))
    return np.stack(out)


def scribbles(n: int, rng: np.random.Generator) -> np.ndarray:
    """Random pen strokes: 4 to 8 points joined by lines 3 to 5 pixels wide."""
    from PIL import Image, ImageDraw

    out = []
    for _ in range(n):
        canvas = Image.new("L", (96, 96))
        points = [tuple(p) for p in rng.uniform(8, 88, size=(rng.integers(4, 9), 2))]
        ImageDraw.Draw(canvas).line(points, fill=255, width=int(rng.integers(3, 6)), joint="curve")
        out.append(mnist_layout(np.asarray(canvas)))
    return np.stack(out)


def shapes(n: int, rng: np.random.Generator) -> np.ndarray:
    """Squares, triangles, stars, crosses and grids, outlined or filled (no circles or bars:
    those are how people write 0 and 1)."""
    from PIL import Image, ImageDraw

    out = []
    for _ in range(n):
        canvas = Image.new("L", (96, 96))
        draw = ImageDraw.Draw(canvas)
        kind, width = int(rng.integers(5)), int(rng.integers(3, 7))
        fill = 255 if rng.random() < 0.3 and kind < 3 else None
        if kind == 0:
            draw.rectangle((16, 20, 80, 76), outline=255, fill=fill, width=width)
        elif kind == 1:
            draw.polygon([(48, 10), (86, 84), (10, 84)], outline=255, fill=fill, width=width)
        elif kind == 2:
            angles = np.pi / 2 + np.arange(10) * np.pi / 5
            radii = np.where(np.arange(10) % 2, 16, 40)
            star = [
                (48 + r * np.cos(a), 48 - r * np.sin(a)) for r, a in zip(radii, angles, strict=True)
            ]
            draw.polygon(star, outline=255, fill=fill, width=width)
        elif kind == 3:
            draw.line((14, 14, 82, 82), fill=255, width=width)
            draw.line((14, 82, 82, 14), fill=255, width=width)
        else:
            for at in (30, 48, 66):
                draw.line((14, at, 82, at), fill=255, width=width)
                draw.line((at, 14, at, 82), fill=255, width=width)
        image = canvas.rotate(float(rng.uniform(-30, 30)), resample=Image.Resampling.BILINEAR)
        out.append(mnist_layout(np.asarray(image)))
    return np.stack(out)


def noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform, Gaussian and salt-and-pepper noise over the whole image, in turn."""
    kinds = rng.integers(3, size=n)
    uniform = rng.uniform(0, 255, size=(n, 28, 28))
    gaussian = np.clip(rng.normal(128, 64, size=(n, 28, 28)), 0, 255)
    salt = (rng.random((n, 28, 28)) < 0.2) * 255.0
    images = np.where(kinds[:, None, None] == 0, uniform, gaussian)
    return np.where(kinds[:, None, None] == 2, salt, images).astype(np.uint8)


def blank(n: int, rng: np.random.Generator) -> np.ndarray:
    """Empty images: all black, all white, or one flat gray."""
    levels = rng.choice([0, 255, 128], size=n)
    return np.broadcast_to(levels[:, None, None], (n, 28, 28)).astype(np.uint8)


def near_blank(n: int, rng: np.random.Generator) -> np.ndarray:
    """Almost nothing: a few specks, or a faint haze, on black."""
    images = np.zeros((n, 28, 28))
    specks = rng.random((n, 28, 28)) < 0.01
    haze = rng.uniform(0, 30, size=(n, 28, 28))
    faint = rng.random(n) < 0.5
    images = np.where(faint[:, None, None], haze, specks * 255.0)
    return images.astype(np.uint8)


def photo_patches(n: int, rng: np.random.Generator) -> np.ndarray:
    """Gray 28x28 patches of the two photographs scikit-learn ships, shrunk 2 to 6 times."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p).convert("L") for p in load_sample_images().images]
    out = []
    for _ in range(n):
        photo = photos[rng.integers(len(photos))]
        side = int(28 * rng.uniform(2, 6))
        left = int(rng.integers(0, photo.width - side))
        top = int(rng.integers(0, photo.height - side))
        patch = photo.crop((left, top, left + side, top + side))
        out.append(np.asarray(patch.resize((28, 28), Image.Resampling.BOX)))
    return np.stack(out)


OUTLIER_SETS: dict[str, Outliers] = {
    "letters": letters,
    "scribbles": scribbles,
    "shapes": shapes,
    "noise": noise,
    "blank": blank,
    "near_blank": near_blank,
    "photo_patches": photo_patches,
}


def outliers(name: str, n: int, seed: int = 0) -> np.ndarray:
    """``n`` images of the named non-digit set, seeded: (n, 28, 28) uint8.

    Raises:
        DataError: no set has that name.
    """
    if name not in OUTLIER_SETS:
        raise DataError(f"Unknown outlier set '{name}'; choose from {', '.join(OUTLIER_SETS)}.")
    return OUTLIER_SETS[name](n, np.random.default_rng(seed))
