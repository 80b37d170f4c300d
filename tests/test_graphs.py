"""The per-class HNSW graphs and their file (siamindex.graphs)."""

from __future__ import annotations

import numpy as np
import pytest

from siamindex import graphs
from siamindex.errors import IncompatibleIndex


@pytest.fixture
def stored():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(600, 8)).astype(np.float32)
    return vectors, rng.integers(0, 3, len(vectors))


def _nearest(graph, queries: np.ndarray) -> np.ndarray:
    import faiss

    return graph.search(queries, 1, params=faiss.SearchParametersHNSW(efSearch=400))[1][:, 0]


def test_complete_keeps_graphs_of_the_right_size_and_builds_the_others(stored):
    vectors, labels = stored
    built = graphs.complete(None, vectors, labels, 8)
    assert sorted(built) == [0, 1, 2]
    for label, graph in built.items():
        members = vectors[labels == label]
        assert graph.ntotal == len(members)
        # Member i of the graph is the class's i-th row.
        np.testing.assert_array_equal(_nearest(graph, members), np.arange(len(members)))
    stale = {0: built[0], 1: graphs.build(vectors[:5], 8)}  # 1: the wrong size
    again = graphs.complete(stale, vectors, labels, 8)
    assert again[0] is built[0] and again[1] is not stale[1] and again[1].ntotal == built[1].ntotal


def test_extended_adds_to_copies_and_without_drops(stored):
    vectors, labels = stored
    built = graphs.complete(None, vectors, labels, 8)
    sizes = {label: graph.ntotal for label, graph in built.items()}
    new = np.random.default_rng(8).normal(size=(4, 8)).astype(np.float32)
    grown = graphs.extended(built, new, np.array([1, 1, 2, 1]))
    assert grown is not None
    assert grown[0] is built[0] and grown[1] is not built[1]
    assert {label: graph.ntotal for label, graph in built.items()} == sizes  # untouched
    assert (grown[1].ntotal, grown[2].ntotal) == (sizes[1] + 3, sizes[2] + 1)
    # The new members come last, in row order.
    np.testing.assert_array_equal(_nearest(grown[1], new[[0, 1, 3]]), sizes[1] + np.arange(3))
    assert sorted(graphs.without(grown, np.array([2, 2])) or {}) == [0, 1]
    assert graphs.extended(None, new, np.zeros(4)) is None


def test_written_graphs_read_back_with_the_same_answers(stored, tmp_path):
    vectors, labels = stored
    built = graphs.complete(None, vectors, labels, 8)
    graphs.write(tmp_path / "classes.h5", built)
    read = graphs.read(tmp_path / "classes.h5")
    assert sorted(read) == sorted(built)
    for label in built:
        members = vectors[labels == label]
        np.testing.assert_array_equal(
            _nearest(read[label], members), _nearest(built[label], members)
        )
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(IncompatibleIndex, match="is not a file of class graphs"):
        graphs.read(tmp_path / "bad.h5")
