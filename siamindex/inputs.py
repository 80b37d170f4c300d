"""One parser for every IMAGE argument of every command.

An IMAGE is one of:

* a PNG or JPEG file of any size, converted by the rule in ``siamindex.data``;
* a ``.npy`` file of one image (28, 28) or many (n, 28, 28): either uint8 (or another integer
  type) with values 0..255, or float with values 0..1 (scaled by 255 and rounded);
  ``FILE.npy:ROW`` picks one row of a stack;
* an IDX file of images (n, 28, 28), gzipped or not;
* a bundled dataset item or range: ``mnist:test:7``, ``mnist:train:0-999`` (both ends included).

Files and arrays then go through ``siamindex.prepare`` (``prepare="auto"``: anything that is not
already a 28x28 light-on-dark image is laid out as MNIST); ``resize=True`` only scales instead.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from siamindex.data import (
    IMAGE_SIZE,
    IMAGE_SUFFIXES,
    SPLITS,
    load_dataset,
    load_image_file,
    read_idx,
)
from siamindex.errors import DataError, OldSpelling
from siamindex.prepare import check_mode, prepare

_DATASET_ITEM = re.compile(r"^mnist:(?P<split>\w+)(?::(?P<start>\d+)(?:-(?P<end>\d+))?)?$")
_NPY_ROW = re.compile(r"^(?P<path>.+\.npy):(?P<row>\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class Images:
    """Images read from IMAGE arguments.

    Attributes:
        pixels: (n, 28, 28) uint8.
        names: (n,) where each came from, e.g. "digit.png", "stack.npy:3", "mnist:test:7".
        labels: (n,) int64 true class where the source knows it (bundled data), else -1.
    """

    pixels: np.ndarray
    names: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.names)


def pixels_from_array(array: np.ndarray, name: str) -> np.ndarray:
    """Check an image array and return it as uint8 (n, 28, 28).

    Accepts (28, 28) or (n, 28, 28); integers in 0..255, or floats in 0..1.

    Raises:
        DataError: wrong shape or type, NaN/inf, or values out of range.
    """
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.integer)
        or np.issubdtype(array.dtype, np.floating)
        or array.dtype == bool
    ):
        raise DataError(
            f"{name}: array has dtype {array.dtype}; expected uint8 0-255 or float 0-1."
        )
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{name}: array has shape {array.shape}; expected (28, 28) or (n, 28, 28).")
    if array.shape[0] == 0:
        raise DataError(f"{name}: array holds no images.")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise DataError(f"{name}: array contains NaN or infinite values; clean it first.")
        low, high = float(array.min()), float(array.max())
        if low < 0 or high > 1:
            raise DataError(
                f"{name}: float pixels range {low:g}..{high:g}; expected 0..1 "
                "(save 0..255 pixels as uint8 instead)."
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if array.dtype != np.uint8:
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise DataError(f"{name}: integer pixels range {low}..{high}; expected 0..255.")
    return array.astype(np.uint8)


def _load_npy(path: Path, name: str) -> np.ndarray:
    try:
        with open(path, "rb") as handle:
            if handle.read(6) != b"\x93NUMPY":
                raise DataError(f"'{path}' is not a valid .npy file; save arrays with numpy.save.")
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"File '{path}' does not exist.") from None
    except Exception as exc:  # numpy's header parser raises many types on garbage (even TokenError)
        reason = (
            "holds Python objects" if "allow_pickle" in str(exc) else "is not a valid .npy file"
        )
        raise DataError(f"'{path}' {reason}; save a numeric array with numpy.save.") from None
    if not isinstance(array, np.ndarray):
        raise DataError(f"'{path}' is not a single .npy array.")
    return pixels_from_array(array, name)


def _dataset_item(spec: str, match: re.Match[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    split = match["split"]
    if split not in SPLITS:
        raise DataError(f"'{spec}': unknown split '{split}'; use mnist:train:N or mnist:test:N.")
    dataset = load_dataset(None, split)
    start = int(match["start"]) if match["start"] is not None else 0
    end = (
        int(match["end"])
        if match["end"] is not None
        else (start if match["start"] is not None else len(dataset) - 1)
    )
    if end < start or end >= len(dataset):
        raise DataError(
            f"'{spec}': range {start}-{end} is outside mnist:{split} (0-{len(dataset) - 1})."
        )
    rows = np.arange(start, end + 1)
    return dataset.images[rows], [f"mnist:{split}:{i}" for i in rows], dataset.labels[rows]


def layout_of(resize: bool, prepare: str) -> str:
    """One word for how images become 28x28: "resize" (the --resize flag) or a prepare mode."""
    return "resize" if resize else check_mode(prepare)


def _prepared(pixels: np.ndarray, layout: str, spec: str) -> np.ndarray:
    """Arrays (.npy, IDX) through ``prepare``: "auto" lays out only the images that are not
    light on dark already; "mnist" all of them."""
    if layout not in ("auto", "mnist"):
        return pixels
    try:
        return np.stack([prepare(image, layout) for image in pixels])
    except DataError as exc:
        raise DataError(f"'{spec}': {exc}") from None


def load_one(spec: str, layout: str = "auto") -> tuple[np.ndarray, list[str], np.ndarray]:
    """Read one IMAGE argument: (uint8 (n, 28, 28), names, labels or -1).

    ``layout`` is "resize", or a ``prepare`` mode ("auto", "mnist", "none").
    """
    match = _DATASET_ITEM.match(spec)
    if match:
        return _dataset_item(spec, match)
    if spec.startswith("mnist:"):
        raise DataError(f"'{spec}' is not a dataset item; write mnist:test:7 or mnist:train:0-99.")
    if _NPY_ROW.match(spec):
        return load_one_cached(spec, layout, {})
    path = Path(spec)
    if not path.exists():
        raise DataError(
            f"Image '{spec}' does not exist; pass a PNG/JPEG, .npy or IDX file, or mnist:test:N."
        )
    if path.is_dir():
        raise DataError(
            f"'{spec}' is a folder; pass image files (a shell glob such as {spec}/*.png works)."
        )
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        prepared = load_image_file(path, resize=layout == "resize", prepare=layout)
        return prepared[None], [spec], np.array([-1])
    if suffix == ".npy":
        pixels = _load_npy(path, spec)
    else:
        array = read_idx(path)
        if array.ndim == 1:
            raise DataError(f"'{spec}' is an IDX label file; pass the images file.")
        pixels = pixels_from_array(array, spec)
    pixels = _prepared(pixels, layout, spec)
    names = [spec] if len(pixels) == 1 else [f"{spec}:{i}" for i in range(len(pixels))]
    return pixels, names, np.full(len(pixels), -1)


def load_images(specs: Sequence[str], resize: bool = False, prepare: str = "auto") -> Images:
    """Read many IMAGE arguments into one batch, in order.

    Raises:
        DataError: an argument names nothing readable; the message names it and the fix.
    """
    if not specs:
        raise DataError("No images given; pass image files, .npy/IDX files, or mnist:test:N.")
    layout = layout_of(resize, prepare)
    parts = [load_one(spec, layout) for spec in specs]
    return Images(
        pixels=np.concatenate([p for p, _, _ in parts]),
        names=[name for _, names, _ in parts for name in names],
        labels=np.concatenate([labels for _, _, labels in parts]).astype(np.int64),
    )


@dataclass(frozen=True)
class ClaimsFile:
    """Claims read from a CSV: "image i belongs to class classes[i]" (the truth, when known,
    in true_classes[i])."""

    images: Images
    classes: list[str]
    true_classes: list[str | None]
    lines: list[int]


def read_claims(path: str | Path, resize: bool = False, prepare: str = "auto") -> ClaimsFile:
    """Read a claims CSV with columns ``image`` and ``class`` and an optional ``true_class``
    (``label``, its old name, still works with a deprecation warning).

    ``image`` takes any IMAGE form, or ``FILE.npy:ROW``; relative paths are taken from the
    CSV's own folder. Blank lines are skipped; a UTF-8 byte-order mark is allowed. Each file
    named in the CSV is read once.

    Raises:
        DataError: the file is missing or not CSV, a column is missing, or a row is malformed
            (the message gives its line number).
    """
    import csv

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"Claims file '{path}' does not exist.") from None
    except (UnicodeDecodeError, IsADirectoryError, OSError) as exc:
        raise DataError(
            f"Claims file '{path}' is not a UTF-8 text CSV ({type(exc).__name__})."
        ) from None
    try:
        return parse_claims_text(path, text, layout_of(resize, prepare))
    except csv.Error as exc:
        raise DataError(f"Claims file '{path}' is not valid CSV ({exc}).") from None


def parse_claims_text(path: Path, text: str, layout: str, line_offset: int = 0) -> ClaimsFile:
    """``read_claims`` of a claims CSV's text (its header first); line numbers in errors and
    in ``lines`` are shifted by ``line_offset`` (for a chunk of a bigger file, its header line
    then its data lines)."""
    import csv

    reader = csv.reader(text.splitlines())
    header = next((row for row in reader if any(cell.strip() for cell in row)), None)
    columns = [cell.strip().lower() for cell in header or []]
    missing = [name for name in ("image", "class") if name not in columns]
    if missing:
        raise DataError(
            f"Claims file '{path}' lacks column(s) {', '.join(missing)}; its first line must be a "
            "header such as image,class or image,class,true_class."
        )
    if "label" in columns and "true_class" not in columns:
        warnings.warn(
            f"claims column 'label' in '{path}' is now called 'true_class'.",
            OldSpelling,
            stacklevel=3,
        )
        columns[columns.index("label")] = "true_class"
    names_of = ("image", "class", "true_class")
    where = {name: columns.index(name) for name in names_of if name in columns}
    cache: dict[str, tuple[np.ndarray, list[str], np.ndarray]] = {}
    pixels, names, classes, truths, lines = [], [], [], [], []
    for row in reader:
        line = reader.line_num + line_offset
        if not any(cell.strip() for cell in row):
            continue
        if any(ch < " " and ch != "\t" for cell in row for ch in cell):
            raise DataError(f"{path}, line {line}: contains control characters (such as NUL).")
        if len(row) != len(columns):
            raise DataError(
                f"{path}, line {line}: {len(row)} fields but the header has {len(columns)}."
            )
        image, claimed = row[where["image"]].strip(), row[where["class"]].strip()
        if not image or not claimed:
            raise DataError(f"{path}, line {line}: empty image or class field.")
        spec = _relative_to(image, path.parent)
        try:
            if spec not in cache:
                cache[spec] = load_one_cached(spec, layout, cache)
            loaded = cache[spec]
        except DataError as exc:
            raise DataError(f"{path}, line {line}: {exc}") from None
        if len(loaded[0]) != 1:
            raise DataError(
                f"{path}, line {line}: '{image}' holds {len(loaded[0])} images; name one, "
                "e.g. FILE.npy:ROW or mnist:test:N."
            )
        pixels.append(loaded[0][0])
        names.append(image)
        classes.append(claimed)
        truth = row[where["true_class"]].strip() if "true_class" in where else ""
        truths.append(truth or None)
        lines.append(line)
    if not pixels:
        raise DataError(f"Claims file '{path}' has a header but no claims.")
    images = Images(np.stack(pixels), names, np.full(len(names), -1, dtype=np.int64))
    return ClaimsFile(images, classes, truths, lines)


def _relative_to(spec: str, folder: Path) -> str:
    if spec.startswith("mnist:") or Path(spec).is_absolute():
        return spec
    return str(folder / spec)


def load_one_cached(
    spec: str, layout: str, cache: dict[str, tuple[np.ndarray, list[str], np.ndarray]]
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """``load_one``, reading each ``FILE.npy`` of ``FILE.npy:ROW`` forms only once."""
    row_match = _NPY_ROW.match(spec)
    if not row_match:
        return load_one(spec, layout)
    whole = row_match["path"]
    if whole not in cache:
        cache[whole] = (_load_npy(Path(whole), whole), [whole], np.array([-1]))
    stack, row = cache[whole][0], int(row_match["row"])
    if row >= len(stack):
        raise DataError(f"'{spec}': row {row} is past the end of a stack of {len(stack)} images.")
    return _prepared(stack[row : row + 1], layout, spec), [spec], np.array([-1])
