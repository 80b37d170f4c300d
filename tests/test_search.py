"""Exact FAISS search, global and per class, against brute-force NumPy."""

from __future__ import annotations

import numpy as np
from conftest import brute_force

from siamindex import graphs
from siamindex.search import ClassPartition, GraphPartition, SelectorPartition, exact_search


def test_exact_search_matches_numpy(vectors):
    base, queries = vectors
    distances, rows = exact_search(base, queries, k=7, batch_size=16)
    want_distances, want_rows = brute_force(base, queries, 7)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(distances, want_distances, atol=1e-5)


def test_class_partition_matches_numpy(vectors):
    base, queries = vectors
    labels = np.random.default_rng(1).integers(0, 4, size=len(base))
    classes = np.random.default_rng(2).integers(0, 4, size=len(queries))
    partition = ClassPartition(base, labels)
    distances, rows, third = partition.nearest(queries, classes, support=3)
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(base[members] - queries[i], axis=1)
        assert rows[i] == members[np.argmin(d)]
        assert abs(distances[i] - d.min()) < 1e-5
        assert abs(third[i] - np.sort(d)[2]) < 1e-5


def test_class_partition_leave_one_out(vectors):
    base, _ = vectors
    labels = np.random.default_rng(1).integers(0, 4, size=len(base))
    partition = ClassPartition(base, labels)
    rows = np.arange(len(base))
    distances, found, second = partition.nearest(base, labels, exclude_rows=rows, support=2)
    assert not np.any(found == rows)
    for i in rows:
        members = np.flatnonzero((labels == labels[i]) & (rows != i))
        d = np.sort(np.linalg.norm(base[members] - base[i], axis=1))
        assert abs(distances[i] - d[0]) < 1e-5
        assert abs(second[i] - d[1]) < 1e-5


def test_support_falls_back_to_the_farthest_member_of_a_small_class():
    base = np.array([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]], np.float32)
    partition = ClassPartition(base, np.array([0, 0, 1]))
    nearest, rows, kth = partition.nearest(
        np.zeros((2, 2), np.float32), np.array([0, 1]), support=3
    )
    np.testing.assert_allclose(nearest, [0.0, np.hypot(5, 5)], atol=1e-6)
    np.testing.assert_allclose(kth, [1.0, np.hypot(5, 5)], atol=1e-6)
    # Leave-one-out on a class with no other member: nothing to measure.
    _, rows, kth = partition.nearest(base[2:], np.array([1]), exclude_rows=np.array([2]), support=3)
    assert rows[0] == -1 and np.isinf(kth[0])


def test_class_partition_search_returns_the_k_nearest_members(vectors):
    base, queries = vectors
    labels = np.random.default_rng(1).integers(0, 4, size=len(base))
    labels[:2] = 4  # a class with two members, searched with k=3: padded with inf / -1
    classes = np.random.default_rng(2).integers(0, 5, size=len(queries))
    distances, rows = ClassPartition(base, labels).search(queries, classes, k=3)
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        want_distances, want = brute_force(base[members], queries[i : i + 1], min(3, len(members)))
        np.testing.assert_array_equal(rows[i, : len(want[0])], members[want[0]])
        np.testing.assert_allclose(distances[i, : len(want[0])], want_distances[0], atol=1e-5)
        assert np.all(rows[i, len(members) :] == -1)
        assert np.all(np.isinf(distances[i, len(members) :]))
    assert np.any(classes == 4)


def test_class_partition_with_nprobe_searches_an_ivf_index_per_class():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 8)) * 4  # clustered, as embeddings are
    base = (centres[rng.integers(0, 40, 4000)] + rng.normal(size=(4000, 8))).astype(np.float32)
    labels = rng.integers(0, 2, size=len(base))
    queries = (centres[rng.integers(0, 40, 300)] + rng.normal(size=(300, 8))).astype(np.float32)
    classes = rng.integers(0, 2, size=len(queries))
    partition = ClassPartition(base, labels)
    assert [partition.lists(c) for c in (0, 1)] == [
        max(1, min(int(np.sqrt(n)), n // 39)) for n in np.bincount(labels)
    ]
    exact_distances, exact_rows = partition.search(queries, classes, k=3)
    # All lists visited: exact.
    everything = max(partition.lists(c) for c in (0, 1))
    distances, rows = partition.search(queries, classes, k=3, nprobe=everything)
    np.testing.assert_array_equal(rows, exact_rows)
    np.testing.assert_allclose(distances, exact_distances, rtol=1e-5)
    # One list: only members of the class, nearest first, and really approximate.
    distances, rows = partition.search(queries, classes, k=3, nprobe=1)
    assert np.all(labels[rows] == classes[:, None])
    assert np.all(np.diff(distances, axis=1) >= 0)
    found = np.mean([len(set(r) & set(e)) / 3 for r, e in zip(rows, exact_rows, strict=True)])
    assert 0.3 < found < 1.0
    nearest, _, _ = partition.nearest(queries, classes, support=3, nprobe=everything)
    np.testing.assert_allclose(nearest, exact_distances[:, 0], rtol=1e-5)


def _with_gaps(vectors: np.ndarray, spec: str = "IVF16,Flat"):
    """An IDMap2 index of a FAISS type whose ids skip some numbers (as after `remove`)."""
    import faiss

    ids = np.arange(len(vectors), dtype=np.int64) * 2 + 5
    index = faiss.index_factory(vectors.shape[1], f"IDMap2,{spec}")
    if not index.is_trained:
        index.train(vectors)
    index.add_with_ids(vectors, ids)
    return index, ids


def test_selector_partition_visiting_every_list_is_exact():
    rng = np.random.default_rng(3)
    stored = rng.normal(size=(3000, 12)).astype(np.float32)
    labels = rng.integers(0, 4, len(stored))
    queries = rng.normal(size=(200, 12)).astype(np.float32)
    claimed = rng.integers(0, 4, len(queries))
    index, ids = _with_gaps(stored)
    exact = ClassPartition(stored, labels)
    selector = SelectorPartition(index, ids, labels, default_nprobe=16)  # 16 = every list
    for got, want in zip(
        selector.nearest(queries, claimed, support=3),
        exact.nearest(queries, claimed, support=3),
        strict=True,
    ):
        assert np.allclose(got, want, atol=1e-4)
    own = np.arange(0, 3000, 15)
    got = selector.nearest(stored[own], labels[own], exclude_rows=own, support=2)
    want = exact.nearest(stored[own], labels[own], exclude_rows=own, support=2)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[2], want[2], atol=1e-4)
    distances, rows = selector.search(queries, claimed, k=4)
    assert (labels[rows] == claimed[:, None]).all()  # only members of the claimed class
    # The nearer class, found in the IVF index itself.
    _, _, kth = exact.nearest(queries, claimed, support=3)
    want = exact.nearer_class(queries, claimed, kth, support=3)
    assert np.array_equal(selector.nearer_class(queries, claimed, kth, support=3), want)
    assert (want >= 0).any() and (want < 0).any()


def test_selector_partition_visits_only_the_lists_asked_for():
    # Two classes in two far clusters, an IVF index of two lists (one per cluster): a query in
    # class 0's cluster claimed as class 1 finds no member in its one nearest list.
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 500)
    stored = rng.normal(size=(1000, 8)).astype(np.float32)
    stored[labels == 1] += 100
    index, ids = _with_gaps(stored, "IVF2,Flat")
    selector = SelectorPartition(index, ids, labels, default_nprobe=1)
    query, claimed = stored[:1] + 0.01, np.array([1])
    assert selector.nearest(query, claimed)[1][0] == -1
    assert np.isinf(selector.nearest(query, claimed)[0][0])
    assert labels[selector.nearest(query, claimed, nprobe=2)[1][0]] == 1


def test_selector_partition_support_is_infinite_when_the_lists_visited_hold_too_few_members():
    # Class 1 has 500 members, but only 2 of them lie in class 0's cluster: a search of that
    # one list finds 2, and the 3rd member is not "the farthest found" (that fallback is for
    # classes with fewer members than the support) but out of reach.
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 500)
    stored = rng.normal(size=(1000, 8)).astype(np.float32)
    stored[labels == 1] += 100
    stored[[500, 501]] = stored[[0, 1]] + 0.001  # two class-1 members among the class-0s
    index, ids = _with_gaps(stored, "IVF2,Flat")
    selector = SelectorPartition(index, ids, labels, default_nprobe=1)
    query, claimed = stored[:1] + 0.01, np.array([1])
    nearest, rows, kth = selector.nearest(query, claimed, support=3)
    assert rows[0] in (500, 501) and np.isfinite(nearest[0])
    assert np.isinf(kth[0])
    assert np.isfinite(selector.nearest(query, claimed, support=2)[2][0])


def _nearer_class_by_numpy(stored, labels, queries, claimed, kth, support, exclude=None):
    """The reference: of the classes whose support-th member (leaving a row out) is nearer
    than the claimed class's, the nearest ([] when none)."""
    out = []
    for i, query in enumerate(queries):
        d = np.linalg.norm(stored - query, axis=1)
        if exclude is not None:
            d[exclude[i]] = np.inf
        kths = {c: np.sort(d[labels == c])[support - 1] for c in np.unique(labels)}
        nearer = [c for c in kths if c != claimed[i] and kths[c] < kth[i]]
        out.append([min(nearer, key=kths.get)] if nearer else [])
    return out


def test_nearer_class_names_a_class_with_support_members_nearer_than_the_claimed_one(vectors):
    stored, queries = vectors
    labels = np.arange(len(stored)) % 4
    claimed = np.arange(len(queries)) % 4
    partition = ClassPartition(stored, labels)
    for support in (1, 3):
        _, _, kth = partition.nearest(queries, claimed, support=support)
        found = partition.nearer_class(queries, claimed, kth, support=support)
        want = _nearer_class_by_numpy(stored, labels, queries, claimed, kth, support)
        assert [f in w if w else f == -1 for f, w in zip(found, want, strict=True)] == [True] * 50
        assert 0 < np.sum(found >= 0) < len(queries)  # both answers occur
    own = np.arange(0, 200, 5)
    _, _, kth = partition.nearest(stored[own], labels[own], exclude_rows=own, support=2)
    found = partition.nearer_class(stored[own], labels[own], kth, support=2, exclude_rows=own)
    want = _nearer_class_by_numpy(stored, labels, stored[own], labels[own], kth, 2, own)
    assert [f in w if w else f == -1 for f, w in zip(found, want, strict=True)] == [True] * 40


def test_nearer_class_in_scale_lets_a_sparse_class_outvote_nothing_it_should_not():
    """With a scale per class, a class is nearer when its support-th member is nearer divided
    by its scale: checked against NumPy on random data where two classes have wider scales
    (as late classes of few members do), including rivals that lie beyond the nearest
    neighbours the vote looks among."""
    rng = np.random.default_rng(11)
    crowded = rng.normal(size=(400, 4)).astype(np.float32)
    sparse = (rng.normal(size=(12, 4)) * 2.5).astype(np.float32)  # two sparse classes
    stored = np.concatenate([crowded, sparse])
    labels = np.concatenate([np.arange(400) % 3, 3 + np.arange(12) % 2])
    scales = np.array([1.0, 1.0, 1.0, 2.5, 3.0])
    queries = (rng.normal(size=(300, 4)) * 2.0).astype(np.float32)
    claimed = rng.integers(0, 5, size=len(queries))
    partition = ClassPartition(stored, labels)
    _, _, kth = partition.nearest(queries, claimed, support=3)
    found = partition.nearer_class(queries, claimed, kth, support=3, scales=scales)
    for i, query in enumerate(queries):
        d = np.linalg.norm(stored - query, axis=1)
        kths = {c: np.sort(d[labels == c])[2] / scales[c] for c in range(5)}
        nearer = {c for c in kths if c != claimed[i] and kths[c] < kth[i] / scales[claimed[i]]}
        assert found[i] in nearer if nearer else found[i] == -1
    plain = partition.nearer_class(queries, claimed, kth, support=3)
    sparse_claims = claimed >= 3
    # Scaled, claims about the sparse classes are outvoted less often, and those about the
    # crowded ones more often (by a sparse class found beyond the nearest neighbours, too).
    assert np.sum(found[sparse_claims] >= 0) < np.sum(plain[sparse_claims] >= 0)
    assert np.sum(found[~sparse_claims] >= 3) > np.sum(plain[~sparse_claims] >= 3)
    same = partition.nearer_class(queries, claimed, kth, support=3, scales=np.full(5, 0.7))
    np.testing.assert_array_equal(same, plain)  # one scale for all: the plain vote


def test_graph_partition_searching_wide_equals_exact_and_narrow_finds_farther_members():
    rng = np.random.default_rng(5)
    stored = rng.normal(size=(3000, 12)).astype(np.float32)
    labels = rng.integers(0, 4, len(stored))
    queries = rng.normal(size=(300, 12)).astype(np.float32)
    claimed = rng.integers(0, 4, len(queries))
    index, ids = _with_gaps(stored, "HNSW16")
    built = {c: graphs.build(stored[labels == c], 16) for c in range(4)}
    graphs_ = GraphPartition(index, ids, labels, built, ef_search=1000)  # wider than any class
    exact = ClassPartition(stored, labels)
    for got, want in zip(
        graphs_.nearest(queries, claimed, support=3),
        exact.nearest(queries, claimed, support=3),
        strict=True,
    ):
        assert np.allclose(got, want, atol=1e-4)
    own = np.arange(0, 3000, 15)
    got = graphs_.nearest(stored[own], labels[own], exclude_rows=own, support=2)
    want = exact.nearest(stored[own], labels[own], exclude_rows=own, support=2)
    assert np.array_equal(got[1], want[1]) and np.allclose(got[2], want[2], atol=1e-4)
    # The nearer class, found in the index's own graph (whose ids are not rows).
    _, _, kth = exact.nearest(queries, claimed, support=3)
    want = exact.nearer_class(queries, claimed, kth, support=3)
    assert np.array_equal(graphs_.nearer_class(queries, claimed, kth, support=3), want)
    assert (want >= 0).any() and (want < 0).any()
    # Narrow: a copy that shares the graphs; only members, never nearer than exact, some farther.
    narrow = graphs_.tuned(3)
    assert graphs_.ef_search == 1000 and narrow._graphs is graphs_._graphs
    distances, rows = narrow.search(queries, claimed, k=3)
    assert (labels[rows] == claimed[:, None]).all()
    exact_distances, _ = exact.search(queries, claimed, k=3)
    assert np.all(distances >= exact_distances - 1e-5)
    assert np.any(distances > exact_distances + 1e-5)
