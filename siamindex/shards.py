"""Shards: a dataset cut into pieces that any worker can load on its own.

A build at scale never holds a whole dataset. ``plan`` cuts the splits to index into
``ShardTask``s of at most 10,000 rows (the augmented MNIST's own shards), each knowing the ids its
rows get in the index; ``load`` turns one task into its images, labels and source rows, in
whatever process runs it (the build's own, or a Ray worker). ``embed_shard`` adds the vectors and
image hashes: the columns a bundle stores for each row. NumPy only, until the encoder is called.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from siamindex import augmented, shardfiles
from siamindex.data import Dataset, load_dataset
from siamindex.errors import DataError
from siamindex.store import image_hashes

SHARD_ROWS = augmented.SHARD_SIZE
OPEN_SET = "open-set"  # a task of generated non-digits for calibration, not stored in the index

Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class ShardTask:
    """Rows [start, stop) of one split, stored under ids first_id, first_id + 1, ...

    Attributes:
        data: the dataset (None for the bundled MNIST, ``mnist-aug:...``, or a folder).
        split: the split, or ``OPEN_SET`` for calibration non-digits (seeded by ``start``).
        start, stop: rows of the split (for an open-set task: seed and count).
        first_id: the index id of row ``start`` (-1 for an open-set task).
        resize: resize class-folder images that are not 28x28.
        file: for a folder of Parquet files or .npy shards (``shardfiles``), the file whose
            rows [start, stop) this is; "" otherwise.
        classes: for such a file, the dataset's class names (labels are looked up in them).
    """

    data: str | None
    split: str
    start: int
    stop: int
    first_id: int
    resize: bool = False
    file: str = ""
    classes: tuple[str, ...] = ()

    @property
    def rows(self) -> int:
        return self.stop if self.split == OPEN_SET else self.stop - self.start


@dataclass(frozen=True)
class Plan:
    """What a build at scale will store: its shards, in id order, and the class names."""

    tasks: tuple[ShardTask, ...]
    class_names: tuple[str, ...]
    source: str
    count: int


def plan(data: str | None, splits: tuple[str, ...], resize: bool = False) -> Plan:
    """Cut the given splits of a dataset into shard tasks, ids running over splits in order.

    Only the sizes are read here: an augmented split is never generated, a file split is read
    once (the workers read it again, each for its own rows).

    Raises:
        DataError: the dataset or a split cannot be read.
    """
    if shardfiles.kind_of(data) is not None:
        return _plan_files(str(data), splits)
    tasks: list[ShardTask] = []
    names: tuple[str, ...] | None = None
    source = "mnist"
    for split in splits:
        if augmented.is_spec(data) and split == "train":
            generated = augmented.AugmentedMnist.parse(str(data))
            size, source = generated.count, generated.spec
            names = names or _split(None, "train", False).class_names
        else:
            dataset = _split(data, split, resize)
            size, names = len(dataset), names or dataset.class_names
            source = source if augmented.is_spec(data) else dataset.source
            _same_classes(names, dataset.class_names, data)
        first = tasks[-1].first_id + tasks[-1].rows if tasks else 0
        for start in range(0, size, SHARD_ROWS):
            stop = min(size, start + SHARD_ROWS)
            tasks.append(ShardTask(data, split, start, stop, first + start, resize))
    assert names is not None, "plan() needs at least one split"
    count = sum(task.rows for task in tasks)
    return Plan(tuple(tasks), names, source, count)


def _plan_files(data: str, splits: tuple[str, ...]) -> Plan:
    """A folder of Parquet files or .npy shards: one split, its files cut into shards."""
    if tuple(splits) != ("train",):
        raise DataError(
            f"'{data}' holds {shardfiles.kind_of(data)} files: one split, used as the train "
            "split; pass --splits train."
        )
    sizes, names = shardfiles.survey(data)
    tasks: list[ShardTask] = []
    first = 0
    for path, size in sizes:
        for start in range(0, size, SHARD_ROWS):
            stop = min(size, start + SHARD_ROWS)
            tasks.append(ShardTask(data, "train", start, stop, first + start, False, path, names))
        first += size
    if not first:
        raise DataError(f"'{data}' holds no images.")
    return Plan(tuple(tasks), names, str(Path(data).resolve()), first)


def _same_classes(first: tuple[str, ...], other: tuple[str, ...], data: str | None) -> None:
    if first != other:
        raise DataError(
            f"Splits of '{data}' have different classes; give every split the same class folders."
        )


@lru_cache(maxsize=4)
def _split(data: str | None, split: str, resize: bool) -> Dataset:
    """One split, read once per process (the bundled MNIST is shared; folders are small)."""
    if augmented.is_spec(data) and split == "train":
        raise ValueError("augmented splits are generated shard by shard, never loaded whole")
    return load_dataset(data, split, resize=resize)


def load(task: ShardTask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images, labels, source_index) of a task's rows: (m, 28, 28) uint8, (m,), (m,) int64."""
    if task.split == OPEN_SET:
        from siamindex.exposure import exposure

        images = exposure(task.stop, seed=task.start)
        return images, np.full(len(images), -1, np.int64), np.arange(len(images), dtype=np.int64)
    if task.file:
        images, labels = shardfiles.read(task.file, task.start, task.stop, tuple(task.classes))
        found = np.arange(task.first_id, task.first_id + len(images), dtype=np.int64)
        return images, labels, found  # the row in the dataset, files in name order
    if augmented.is_spec(task.data) and task.split == "train":
        generated = augmented.AugmentedMnist.parse(str(task.data))
        mnist = _split(None, "train", False)
        shard = task.start // SHARD_ROWS
        return generated.shard(shard, mnist.images, mnist.labels)
    dataset = _split(task.data, task.split, task.resize)
    rows = slice(task.start, task.stop)
    return dataset.images[rows], dataset.labels[rows], dataset.source_index[rows]


def embed_shard(task: ShardTask, embed: Callable[[np.ndarray], np.ndarray]) -> Columns:
    """Load a task and embed it: every column a bundle stores for its rows.

    Returns:
        {"ids", "labels", "split", "source_index", "image_sha256", "embeddings", "images"},
        and "load_seconds" and "embed_seconds": each row's share of the seconds the shard took
        to load (or generate) and to embed, so that sums over rows are the work's seconds.
    """
    started = time.perf_counter()
    images, labels, source_index = load(task)
    loaded = time.perf_counter()
    vectors = np.asarray(embed(images), dtype=np.float32)
    embedded = time.perf_counter()
    share = 1 / max(1, len(images))  # each row carries its share of the shard's seconds
    return {
        "ids": np.arange(task.first_id, task.first_id + len(images), dtype=np.int64),
        "labels": np.asarray(labels, dtype=np.int64),
        "split": np.full(len(images), task.split),
        "source_index": np.asarray(source_index, dtype=np.int64),
        "image_sha256": image_hashes(images),
        "embeddings": vectors,
        "images": np.asarray(images, dtype=np.uint8),
        "load_seconds": np.full(len(images), (loaded - started) * share),
        "embed_seconds": np.full(len(images), (embedded - loaded) * share),
    }
