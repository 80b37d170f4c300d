"""The metadata file written a shard at a time reads back as the same store."""

from __future__ import annotations

import h5py
import numpy as np

from siamindex.metadata import write_rows
from siamindex.store import IndexStore


def test_rows_written_in_pieces_read_back_as_written_whole(fake_index, tmp_path):
    store = fake_index.store.with_images()
    whole = tmp_path / "whole"
    whole.mkdir()
    store.write(whole)
    pieces = tmp_path / "pieces"
    pieces.mkdir()
    store.write(pieces)  # index.faiss and the header; the rows are then rewritten in pieces
    rows = store.rows
    with h5py.File(pieces / "metadata.h5", "r+") as handle:
        for name in (
            "ids",
            "labels",
            "split",
            "source_index",
            "image_sha256",
            "embeddings",
            "images",
        ):
            del handle[name]
        write = write_rows(handle, len(rows), store.embedding_dim, images=True)
        for start in (700, 0, 1200):  # any order
            stop = {0: 700, 700: 1200, 1200: len(rows)}[start]
            part = rows.take(np.arange(start, stop))
            columns = {
                f: getattr(part, f)
                for f in ("ids", "labels", "split", "source_index", "image_sha256", "embeddings")
            }
            write(start, columns, rows.images[start:stop])
    a, b = IndexStore.read(whole), IndexStore.read(pieces)
    for field in ("ids", "labels", "split", "source_index", "image_sha256", "embeddings"):
        assert np.array_equal(getattr(a.rows, field), getattr(b.rows, field)), field
    assert np.array_equal(a.with_images().rows.images, b.with_images().rows.images)
    assert a.facts == b.facts and a.class_names == b.class_names
