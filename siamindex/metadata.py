"""The bundle's HDF5 metadata file, written a shard at a time.

``write_rows`` creates the per-row datasets empty and returns a function that fills any range of
rows, so that ``IndexStore.write`` (all rows at once) and a build at scale (``scale``, one shard
at a time, never holding them all) write the same layout; ``write_header`` adds the class names,
thresholds and facts. Reading is ``store``'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from siamindex.bundle import FORMAT_VERSION
from siamindex.facts import IndexFacts


def write_rows(
    handle: Any, count: int, embedding_dim: int, images: bool
) -> Callable[[int, dict[str, np.ndarray], np.ndarray | None], None]:
    """Create the metadata file's per-row datasets for ``count`` rows, empty.

    Returns:
        ``write(start, columns, images)``: fills rows [start, start + n) from the columns
        (``ids``, ``labels``, ``split``, ``source_index``, ``image_sha256``, ``embeddings``) and
        the (n, 28, 28) uint8 images (ignored unless ``images``), so that a build can write its
        rows a shard at a time. Images are compressed in chunks of 1,024.
    """
    import h5py

    strings = h5py.string_dtype()
    datasets = {
        "ids": handle.create_dataset("ids", shape=(count,), dtype=np.int64),
        "labels": handle.create_dataset("labels", shape=(count,), dtype=np.int64),
        "split": handle.create_dataset("split", shape=(count,), dtype=strings),
        "source_index": handle.create_dataset("source_index", shape=(count,), dtype=np.int64),
        "image_sha256": handle.create_dataset("image_sha256", shape=(count,), dtype="S64"),
        "embeddings": handle.create_dataset(
            "embeddings", shape=(count, embedding_dim), dtype=np.float32
        ),
    }
    pixels = None
    if images and count:
        pixels = handle.create_dataset(
            "images",
            shape=(count, 28, 28),
            dtype=np.uint8,
            chunks=(min(count, 1024), 28, 28),
            compression="gzip",
            compression_opts=4,
        )

    def write(start: int, columns: dict[str, np.ndarray], images: np.ndarray | None) -> None:
        stop = start + len(columns["ids"])
        if stop == start:
            return
        for name, dataset in datasets.items():
            values = np.asarray(columns[name])
            if name == "split":
                values = values.astype(object)
            elif name == "image_sha256":
                values = values.astype("S64")
            dataset[start:stop] = values
        if pixels is not None and images is not None:
            pixels[start:stop] = np.asarray(images, dtype=np.uint8)

    return write


def write_header(
    handle: Any,
    class_names: tuple[str, ...],
    class_thresholds: np.ndarray,
    probability: np.ndarray | None,
    facts: IndexFacts,
    count: int,
) -> None:
    """Write the metadata file's class names, thresholds and facts (its rows are elsewhere)."""
    import h5py

    handle.create_dataset("class_names", data=list(class_names), dtype=h5py.string_dtype())
    handle.create_dataset("class_thresholds", data=class_thresholds)
    if probability is not None:
        handle.create_dataset("membership_probability", data=probability)
    attrs = replace(facts, format_version=FORMAT_VERSION).to_attrs()
    for key, value in {**attrs, "count": count}.items():
        handle.attrs[key] = value
