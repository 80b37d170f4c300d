"""Read datasets into uint8 images (n, 28, 28) and integer labels.

Three sources are understood:

* the bundled MNIST files (the default), verified against their SHA-256 sums on load;
* a folder holding the four IDX files in MNIST naming (``train-images-idx3-ubyte[.gz]``,
  ``train-labels-idx1-ubyte[.gz]``, ``t10k-...``), verified too when a ``SHA256SUMS`` lies beside
  them;
* a folder of class sub-folders of PNG/JPEG files (class = folder name), the layout that
  ``keras.utils.image_dataset_from_directory`` reads. With ``train/`` and ``test/`` sub-folders each
  is a split; otherwise the whole folder is the ``train`` split.

Image conversion rule (files only): decode with Pillow, convert to 8-bit grayscale with Pillow's
``"L"`` mode (ITU-R 601-2 luma: L = R*299/1000 + G*587/1000 + B*114/1000; an alpha channel is
composited onto black first), and keep the polarity as is (MNIST digits are light on dark). Images
must be 28x28; other sizes are resized to 28x28 with Lanczos filtering only when ``resize=True``.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import augmented
from siamindex.errors import DataError

IMAGE_SIZE = 28
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


@dataclass(frozen=True)
class Dataset:
    """One split of a dataset.

    Attributes:
        images: (n, 28, 28) uint8, light digit on dark background.
        labels: (n,) int64 class indices into ``class_names``.
        class_names: name of each class; for IDX data the label value as text.
        split: "train" or "test".
        source: where it came from ("mnist" for the bundled files, else a path).
        source_index: (n,) int64 row of each image in its source (file order).
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    split: str
    source: str
    source_index: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray | slice) -> Dataset:
        """Return the rows selected by ``rows`` (an index array or a slice)."""
        return Dataset(
            images=self.images[rows],
            labels=self.labels[rows],
            class_names=self.class_names,
            split=self.split,
            source=self.source,
            source_index=self.source_index[rows],
        )


def parse_classes(text: str, class_names: Sequence[str]) -> tuple[str, ...]:
    """Class names from ``"0-5"``, ``"0,2,7"`` or ``"0-3,7"`` (a range runs over
    ``class_names`` in their order), each once, in the dataset's order.

    Raises:
        DataError: a name is unknown, a range runs backwards, or nothing is named.
    """
    known = list(class_names)
    chosen: set[str] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        first, _, last = part.partition("-") if part not in known else (part, "", "")
        ends = [first.strip(), (last or first).strip()]
        unknown = [name for name in ends if name not in known]
        if unknown:
            raise DataError(
                f"Unknown class '{unknown[0]}' in '{text}'; the classes are "
                f"{', '.join(known)} (give names or ranges, e.g. 0-5 or 0,2,7)."
            )
        start, stop = (known.index(name) for name in ends)
        if stop < start:
            raise DataError(f"Range '{part}' runs backwards; write it as {ends[1]}-{ends[0]}.")
        chosen.update(known[start : stop + 1])
    if not chosen:
        raise DataError(f"No class named in '{text}'; give names or ranges, e.g. 0-5 or 0,2,7.")
    return tuple(name for name in known if name in chosen)


def only_classes(dataset: Dataset, names: Sequence[str]) -> Dataset:
    """The rows of ``dataset`` whose class is named (labels and class names unchanged).

    Raises:
        DataError: a name is not one of the dataset's classes.
    """
    unknown = [name for name in names if name not in dataset.class_names]
    if unknown:
        raise DataError(
            f"Unknown class '{unknown[0]}'; the dataset's classes are "
            f"{', '.join(dataset.class_names)}."
        )
    wanted = [dataset.class_names.index(name) for name in names]
    return dataset.subset(np.flatnonzero(np.isin(dataset.labels, wanted)))


def balanced_sample(dataset: Dataset, count: int, rng: np.random.Generator) -> Dataset:
    """``count`` rows drawn without replacement, as evenly over the classes as they allow
    (the first ``count % classes`` classes in a random order get one more), in file order.

    Raises:
        DataError: the dataset holds fewer than ``count`` rows.
    """
    if count > len(dataset):
        raise DataError(f"Asked for {count} images but the dataset holds {len(dataset)}.")
    classes = rng.permutation(np.unique(dataset.labels))
    rows_of = {c: rng.permutation(np.flatnonzero(dataset.labels == c)) for c in classes}
    taken = {c: 0 for c in classes}
    left = count
    while left:  # round-robin, skipping classes that ran out
        for c in classes:
            if left and taken[c] < len(rows_of[c]):
                taken[c] += 1
                left -= 1
    rows = np.concatenate([rows_of[c][: taken[c]] for c in classes])
    return dataset.subset(np.sort(rows))


def bundled_mnist_dir() -> Path:
    """Folder of the MNIST files shipped in the package."""
    return Path(str(resources.files("siamindex.datasets") / "mnist"))


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a NumPy array of its stored type.

    Raises:
        DataError: the file is missing, truncated, oversized, or its header is not IDX.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"IDX file '{path}' does not exist.") from None
    except IsADirectoryError:
        raise DataError(f"'{path}' is a folder, not an IDX file.") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"IDX file '{path}' is not readable gzip data ({exc}).") from None
    return parse_idx(raw, name=str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse the bytes of an uncompressed IDX file (see ``read_idx``)."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"'{name}' is not an IDX file (bad magic number {raw[:4].hex() or 'empty'}); "
            "expected 0x0000 then a type code such as 08 (uint8)."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    if ndim == 0:
        raise DataError(f"IDX file '{name}' declares 0 dimensions; expected 1 or more.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file '{name}' is truncated inside its header.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd headers
    actual = len(raw) - header
    if actual != expected:
        problem = "truncated" if actual < expected else "longer than its header says"
        raise DataError(
            f"IDX file '{name}' is {problem}: header shape {shape} needs {expected} data bytes, "
            f"found {actual}."
        )
    data = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return np.asarray(data.reshape(shape).astype(dtype.newbyteorder("=")))


def images_and_labels_from_idx(
    images: np.ndarray, labels: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Check a pair of IDX arrays and return (uint8 (n, 28, 28) images, int64 (n,) labels)."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{name}: images have shape {images.shape}; expected (n, 28, 28). "
            "Convert them to 28x28 first."
        )
    if images.dtype != np.uint8:
        raise DataError(f"{name}: images are {images.dtype}; expected unsigned bytes (type 0x08).")
    if labels.ndim != 1:
        raise DataError(f"{name}: labels have shape {labels.shape}; expected one dimension (n,).")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{name}: labels are {labels.dtype}; expected integers.")
    if len(labels) != len(images):
        raise DataError(
            f"{name}: {len(images)} images but {len(labels)} labels; the counts must agree."
        )
    if len(labels) and labels.min() < 0:
        raise DataError(f"{name}: labels include negative values; expected class numbers >= 0.")
    return images, labels.astype(np.int64)


def _find_idx(folder: Path, split: str, kind: str) -> Path:
    stem = f"{_IDX_PREFIX[split]}-{kind}-idx{3 if kind == 'images' else 1}-ubyte"
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"'{folder}' has no {split} {kind} file ({stem} or {stem}.gz); "
        "name the IDX files as MNIST does (train-*, t10k-*)."
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path, names: Sequence[str]) -> None:
    """Check the named files against ``folder/SHA256SUMS`` (``sha256sum`` format).

    Raises:
        DataError: a sum is missing or does not match.
    """
    sums_file = folder / "SHA256SUMS"
    expected: dict[str, str] = {}
    for line in sums_file.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            expected[parts[1].lstrip("*")] = parts[0].lower()
    for name in names:
        if name not in expected:
            raise DataError(
                f"'{sums_file}' has no checksum for '{name}'; add one or remove the file."
            )
        if sha256_file(folder / name) != expected[name]:
            raise DataError(
                f"'{folder / name}' does not match its SHA-256 in {sums_file}: the file is "
                "damaged; restore it from a good copy (for the bundled MNIST, reinstall siamindex)."
            )


@lru_cache(maxsize=8)
def _load_idx_split(folder: Path, split: str, bundled: bool) -> Dataset:
    images_path = _find_idx(folder, split, "images")
    labels_path = _find_idx(folder, split, "labels")
    if (folder / "SHA256SUMS").is_file():
        verify_checksums(folder, [images_path.name, labels_path.name])
    images, labels = images_and_labels_from_idx(
        read_idx(images_path), read_idx(labels_path), f"{images_path.name}/{labels_path.name}"
    )
    images.setflags(write=False)
    labels.setflags(write=False)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    return Dataset(
        images=images,
        labels=labels,
        class_names=tuple(str(c) for c in range(num_classes)),
        split=split,
        source="mnist" if bundled else str(folder),
        source_index=np.arange(len(labels), dtype=np.int64),
    )


def load_image_file(
    path: str | os.PathLike[str], resize: bool = False, prepare: str = "none"
) -> np.ndarray:
    """Decode one PNG/JPEG file into a uint8 (28, 28) array by the module's conversion rule.

    Args:
        path: the file.
        resize: scale any size to 28x28 (nothing else).
        prepare: "none" (must be 28x28), "mnist" or "auto" (see ``siamindex.prepare``).

    Raises:
        DataError: the file is missing or not a readable image, or is not 28x28 and neither
            ``resize`` nor ``prepare`` makes it so.
    """
    return _image_from(Path(path), f"'{path}'", resize, prepare)


def decode_image_bytes(raw: bytes, name: str, prepare: str = "auto") -> np.ndarray:
    """``load_image_file`` for PNG/JPEG bytes (an upload), named ``name`` in errors.

    Raises:
        DataError: not a readable image, or not 28x28 with ``prepare="none"``.
    """
    import io

    return _image_from(io.BytesIO(raw), name, False, prepare)


def _image_from(source: Any, label: str, resize: bool, prepare: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            gray = _decode_gray(source)
    except FileNotFoundError:
        raise DataError(f"Image file {label} does not exist.") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{label} declares an enormous image; refusing to decode it.") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DataError(f"{label} is not a readable PNG/JPEG image ({exc}).") from None
    if prepare != "none" and not resize:
        from siamindex.prepare import prepare as lay_out

        try:
            return lay_out(np.asarray(gray, dtype=np.uint8), prepare)
        except DataError as exc:
            raise DataError(f"Image {label}: {exc}") from None
    if gray.size != (IMAGE_SIZE, IMAGE_SIZE):
        if not resize:
            width, height = gray.size
            raise DataError(
                f"Image {label} is {width}x{height}; expected 28x28. "
                "Pass --prepare mnist to lay it out as MNIST, or --resize to scale it."
            )
        gray = gray.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8)


def _decode_gray(path: Any) -> Any:
    """Decode with Pillow to 8-bit grayscale, compositing any alpha onto black."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        if image.mode in ("RGBA", "LA", "PA") or (
            image.mode == "P" and "transparency" in image.info
        ):
            background = Image.new("RGBA", image.size, (0, 0, 0, 255))
            return Image.alpha_composite(background, image.convert("RGBA")).convert("L")
        return image.convert("L")


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _load_folder_split(folder: Path, split: str, resize: bool) -> Dataset:
    classes = _class_folders(folder)
    if not classes:
        raise DataError(
            f"'{folder}' has no class sub-folders; put each class's images in DIR/<class>/."
        )
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, class_dir in enumerate(classes):
        files = sorted(
            p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        for path in files:
            images.append(load_image_file(path, resize=resize))
            labels.append(label)
    if not images:
        raise DataError(f"'{folder}' holds no .png/.jpg/.jpeg files in its class sub-folders.")
    return Dataset(
        images=np.stack(images),
        labels=np.asarray(labels, dtype=np.int64),
        class_names=tuple(p.name for p in classes),
        split=split,
        source=str(folder),
        source_index=np.arange(len(labels), dtype=np.int64),
    )


def load_dataset(
    data_dir: str | os.PathLike[str] | None = None, split: str = "train", resize: bool = False
) -> Dataset:
    """Load one split of a dataset.

    Args:
        data_dir: None for the bundled MNIST, ``mnist-aug:N[:SEED]`` for N distorted MNIST
            train images as the train split (its test split is MNIST's), else an IDX folder,
            a folder of class folders, or a folder of Parquet files or .npy shards (the train
            split; see ``shardfiles``).
        split: "train" or "test".
        resize: resize image files that are not 28x28 (IDX data must be 28x28 already).

    Returns:
        The split as a ``Dataset``; arrays of the bundled data are read-only and shared.

    Raises:
        DataError: the folder is missing or its files are damaged or malformed.
    """
    if split not in SPLITS:
        raise DataError(f"Unknown split '{split}'; expected one of {', '.join(SPLITS)}.")
    if data_dir is None:
        return _load_idx_split(bundled_mnist_dir(), split, True)
    if augmented.is_spec(data_dir):
        if split != "train":  # the distorted images stand in for the train split only
            return _load_idx_split(bundled_mnist_dir(), split, True)
        from siamindex import shardfiles  # it builds a Dataset of what augmented generates

        return shardfiles.augmented_split(augmented.AugmentedMnist.parse(str(data_dir)))
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(
            f"Data folder '{folder}' does not exist or is not a folder; pass a folder of IDX files "
            "or of class sub-folders."
        )
    if any(folder.glob("*-idx[13]-ubyte*")):
        return _load_idx_split(folder.resolve(), split, False)
    from siamindex import shardfiles  # it reads images with this module's decoder

    if shardfiles.kind_of(str(folder)) is not None:
        return shardfiles.load_split(folder, split)
    if (folder / "train").is_dir() or (folder / "test").is_dir():
        if not (folder / split).is_dir():
            raise DataError(
                f"'{folder}' has no '{split}' sub-folder; add {folder / split}/<class>/."
            )
        return _load_folder_split(folder / split, split, resize)
    if split != "train":
        raise DataError(
            f"'{folder}' is one folder of classes, used as the train split; for a {split} split "
            f"arrange it as {folder}/train/<class>/ and {folder}/{split}/<class>/."
        )
    return _load_folder_split(folder, split, resize)
