"""Datasets that are not one file per split: Parquet files with an image column, ``.npy``
shards, and the generated ``mnist-aug:N`` in memory.

A folder of either kind is one split (the train split), read a file (and a range of rows) at a
time, so that a build at scale never holds it whole:

- **Parquet** (``*.parquet``): an ``image`` column of PNG/JPEG bytes, raw 784-byte 28x28 pixels,
  or lists of 784 values, and a ``label`` column (integers or text). Needs pyarrow (the
  ``cluster`` extra).
- **.npy shards**: ``NAME.npy`` holding (n, 28, 28) uint8 images, with ``NAME.labels.npy``
  beside it holding their n labels.

Class names are the distinct labels of all files, integers in numeric order, text in text order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from siamindex.augmented import AugmentedMnist
from siamindex.data import IMAGE_SIZE, Dataset, decode_image_bytes, load_dataset
from siamindex.errors import DataError

PARQUET, NPY = "parquet", "npy"
LABELS_SUFFIX = ".labels.npy"


def kind_of(data: str | None) -> str | None:
    """PARQUET or NPY when ``data`` is a folder of such files, else None."""
    if data is None or not Path(data).is_dir():
        return None
    folder = Path(data)
    if any(folder.glob("*.parquet")):
        return PARQUET
    if any(_npy_shards(folder)):
        return NPY
    return None


def files(data: str) -> list[Path]:
    """The folder's data files, in name order."""
    folder = Path(data)
    if kind_of(data) == PARQUET:
        return sorted(folder.glob("*.parquet"))
    return sorted(_npy_shards(folder))


def _npy_shards(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.npy") if not p.name.endswith(LABELS_SUFFIX)]


def survey(data: str) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """(each file with its row count, the class names), reading labels only.

    Raises:
        DataError: a file is unreadable, lacks a column or its labels, or sizes disagree.
    """
    sizes, labels = [], []
    for path in files(data):
        found = _labels(path)
        sizes.append((str(path), len(found)))
        labels.append(np.unique(found.astype(str) if found.dtype.kind in "OUS" else found))
    values = np.unique(np.concatenate(labels)) if labels else np.array([])
    return sizes, tuple(str(v) for v in values)


def read(
    path: str, start: int, stop: int, class_names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Rows [start, stop) of one file: (m, 28, 28) uint8 images and (m,) int64 class indices.

    Raises:
        DataError: an image is not 28x28 or not decodable, or a label is not a known class.
    """
    if path.endswith(".parquet"):
        table = _parquet(path).read(columns=["image", "label"]).slice(start, stop - start)
        images = _images(table.column("image").to_pylist(), path, start)
        labels = np.asarray(table.column("label").to_pylist())
    else:
        try:
            stack = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DataError(f"'{path}' is not a readable .npy file ({exc}).") from None
        if stack.ndim != 3 or stack.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise DataError(f"'{path}' holds shape {stack.shape}; expected (n, 28, 28) uint8.")
        images = np.asarray(stack[start:stop], dtype=np.uint8)
        labels = _labels(Path(path))[start:stop]
    index = {name: i for i, name in enumerate(class_names)}
    try:
        return images, np.array([index[str(v)] for v in labels], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"'{path}': label {exc} is not among {class_names[:20]}.") from None


def _labels(path: Path) -> np.ndarray:
    if path.suffix == ".parquet":
        parquet = _parquet(str(path))
        names = set(parquet.schema_arrow.names)
        missing = [c for c in ("image", "label") if c not in names]
        if missing:
            raise DataError(
                f"'{path}' lacks column(s) {', '.join(missing)}; a Parquet dataset needs an "
                "image column (PNG/JPEG bytes, 784 raw bytes or 784 values) and a label column."
            )
        return np.asarray(parquet.read(columns=["label"]).column("label").to_pylist())
    labels_path = path.with_name(path.name[: -len(".npy")] + LABELS_SUFFIX)
    try:
        labels = np.load(labels_path, allow_pickle=False)
        count = np.load(path, mmap_mode="r", allow_pickle=False).shape[0]
    except FileNotFoundError:
        raise DataError(
            f"'{path}' has no labels; put its n labels in {labels_path.name} beside it."
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"'{path}' or its labels cannot be read ({exc}).") from None
    if labels.shape != (count,):
        raise DataError(f"'{labels_path}' holds {labels.shape} labels for {count} images.")
    return np.asarray(labels)


def _parquet(path: str) -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(
            "Reading Parquet needs pyarrow; install it with: pip install 'siamindex[cluster]'."
        ) from None
    try:
        return pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"'{path}' is not a readable Parquet file ({exc}).") from None


def _images(values: list[Any], path: str, start: int) -> np.ndarray:
    out = np.empty((len(values), IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    for i, value in enumerate(values):
        name = f"{path}, row {start + i}"
        if isinstance(value, bytes) and len(value) == IMAGE_SIZE * IMAGE_SIZE:
            out[i] = np.frombuffer(value, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE)
        elif isinstance(value, bytes):
            out[i] = decode_image_bytes(value, name, "none")
        elif isinstance(value, list) and len(value) == IMAGE_SIZE * IMAGE_SIZE:
            out[i] = np.clip(np.asarray(value), 0, 255).reshape(IMAGE_SIZE, IMAGE_SIZE)
        else:
            raise DataError(
                f"{name}: the image is neither image bytes nor 784 pixel values; store 28x28 "
                "grayscale images."
            )
    return out


def load_split(folder: Path, split: str) -> Dataset:
    """A folder of Parquet files or .npy shards, all in memory (the train split)."""
    if split != "train":
        raise DataError(
            f"'{folder}' holds {kind_of(str(folder))} files: one split, used as the train split; "
            f"it has no {split} split: pass --splits train."
        )
    sizes, names = survey(str(folder))
    parts = [read(path, 0, size, names) for path, size in sizes]
    images = np.concatenate([p[0] for p in parts])
    return Dataset(
        images=images,
        labels=np.concatenate([p[1] for p in parts]),
        class_names=names,
        split=split,
        source=str(folder.resolve()),
        source_index=np.arange(len(images), dtype=np.int64),
    )


def augmented_split(source: AugmentedMnist) -> Dataset:
    """The train split of ``mnist-aug:N``, all shards in memory (builds at scale read it shard
    by shard instead)."""
    mnist = load_dataset(None, "train")
    parts = [source.shard(i, mnist.images, mnist.labels) for i in range(source.shards)]
    return Dataset(
        images=np.concatenate([p[0] for p in parts]),
        labels=np.concatenate([p[1] for p in parts]),
        class_names=mnist.class_names,
        split="train",
        source=source.spec,
        source_index=np.concatenate([p[2] for p in parts]),
    )
