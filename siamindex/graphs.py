"""The HNSW graphs per class of an index of an HNSW type, and their file in the bundle.

A membership check asks for the nearest stored members of one class; in an index of an HNSW type
it walks a graph of that class's members (``search.GraphPartition``). Building the graphs of a
million vectors takes a minute or more, so the bundle keeps them (``classes.h5``: each FAISS graph
serialized as one byte dataset, named by its class position), and every write brings them up to
date: rows added go into their class's graph (copied first: a reader may be searching the old
one), and a class that lost or changed rows gets a new graph.

A class's graph numbers its members in stored-row order: member i is the class's i-th row.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from siamindex.bundle import REBUILD
from siamindex.errors import IncompatibleIndex

Graphs = dict[int, Any]  # class position -> its FAISS HNSW graph


def width(index: Any) -> int:
    """The M (neighbours per node) of an HNSW index, or of the HNSW index inside an id map."""
    import faiss

    inner: Any = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return int(inner.hnsw.nb_neighbors(1))


def build(vectors: np.ndarray, m: int) -> Any:
    """A FAISS HNSW graph of (n, d) vectors with M = ``m``, numbered 0..n-1."""
    import faiss

    graph = faiss.IndexHNSWFlat(vectors.shape[1], m)
    graph.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return graph


def complete(graphs: Graphs | None, vectors: np.ndarray, labels: np.ndarray, m: int) -> Graphs:
    """A graph for every stored class: the given ones that hold as many members as the class
    has, the others built from the class's rows of (n, d) ``vectors``."""
    labels = np.asarray(labels)
    out: Graphs = {}
    for label, count in enumerate(np.bincount(labels) if len(labels) else ()):
        if not count:
            continue
        kept = (graphs or {}).get(label)
        if kept is not None and kept.ntotal == count:
            out[label] = kept
        else:
            out[label] = build(vectors[labels == label], m)
    return out


def add_to(graphs: Graphs, vectors: np.ndarray, labels: np.ndarray, m: int) -> None:
    """Append rows (n, d) ``vectors`` of classes ``labels`` to their classes' graphs in place
    (graphs no reader has yet, as a streamed build's), starting a graph for a new class."""
    labels = np.asarray(labels)
    for label in np.unique(labels):
        members = vectors[labels == label]
        if int(label) in graphs:
            graphs[int(label)].add(np.ascontiguousarray(members, dtype=np.float32))
        else:
            graphs[int(label)] = build(members, m)


def extended(graphs: Graphs | None, vectors: np.ndarray, labels: np.ndarray) -> Graphs | None:
    """The graphs after rows (n, d) ``vectors`` of classes ``labels`` are appended to the store:
    each class's new members added to a copy of its graph (a class without a graph gets none
    here; ``complete`` builds it)."""
    if graphs is None:
        return None
    import faiss

    out = dict(graphs)
    labels = np.asarray(labels)
    for label in np.unique(labels):
        if int(label) in out:
            graph = faiss.clone_index(out[int(label)])
            graph.add(np.ascontiguousarray(vectors[labels == label], dtype=np.float32))
            out[int(label)] = graph
    return out


def without(graphs: Graphs | None, labels: np.ndarray | list[Any]) -> Graphs | None:
    """The graphs less those of ``labels`` (classes whose members changed: built again)."""
    if graphs is None:
        return None
    dropped = {int(label) for label in np.asarray(labels).ravel()}
    return {label: graph for label, graph in graphs.items() if label not in dropped}


def write(path: Path, graphs: Graphs) -> None:
    """Write the graphs to an HDF5 file, one serialized FAISS index per class."""
    import faiss
    import h5py

    with h5py.File(path, "w") as handle:
        for label, graph in sorted(graphs.items()):
            handle.create_dataset(str(label), data=faiss.serialize_index(graph))


def read(path: Path) -> Graphs:
    """The graphs written by ``write``.

    Raises:
        IncompatibleIndex: the file is not such a file.
    """
    import faiss
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return {
                int(name): faiss.deserialize_index(np.asarray(handle[name][()], dtype=np.uint8))
                for name in handle
            }
    except (OSError, ValueError, RuntimeError) as exc:
        raise IncompatibleIndex(
            f"'{path}' is not a file of class graphs ({str(exc).strip()[:120]}); {REBUILD}."
        ) from None
