"""Nearest-neighbour search with FAISS, global and per class: exact, or within an index's own
IVF lists or HNSW graphs where its type is approximate.

FAISS returns squared L2 distances; everything here returns Euclidean distances.
"""

from __future__ import annotations

import copy
import functools
import threading
from typing import Any

import numpy as np

DEFAULT_QUERY_BATCH = 4096
MAX_RIVAL_NEIGHBOURS = 64  # stored vectors of any class looked at for a nearer class


def flat_index(vectors: np.ndarray) -> Any:
    """An exact FAISS L2 index of (m, d) vectors, for repeated ``exact_search`` calls."""
    return _flat(vectors)


def _flat(vectors: np.ndarray):  # type: ignore[no-untyped-def]
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return index


def _ivf(vectors: np.ndarray, lists: int, seed: int):  # type: ignore[no-untyped-def]
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(vectors.shape[1]), vectors.shape[1], lists)
    index.cp.seed = seed
    index.train(vectors)
    index.add(vectors)
    return index


# FAISS only reads parameter objects during a search: one per value serves every call (and every
# thread), which saves building one per single-vector query.
@functools.lru_cache(maxsize=256)
def ivf_parameters(nprobe: int) -> Any:
    """FAISS search parameters visiting ``nprobe`` IVF lists, for one call."""
    import faiss

    return faiss.SearchParametersIVF(nprobe=int(nprobe))  # type: ignore[call-arg]


@functools.lru_cache(maxsize=256)
def hnsw_parameters(ef_search: int) -> Any:
    """FAISS search parameters with HNSW search breadth ``ef_search``, for one call."""
    import faiss

    return faiss.SearchParametersHNSW(efSearch=int(ef_search))  # type: ignore[attr-defined]


def euclidean(squared: np.ndarray) -> np.ndarray:
    """Euclidean distances from FAISS's squared ones (clipping round-off below zero)."""
    return np.asarray(np.sqrt(np.maximum(squared, 0.0)))


def exact_search(
    base: np.ndarray | Any,
    queries: np.ndarray,
    k: int,
    batch_size: int = DEFAULT_QUERY_BATCH,
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of ``base`` for each query, by exact L2 search.

    Args:
        base: (m, d) float32 stored vectors, or a flat index of them from ``flat_index`` (to
            search one stored set many times without building it again).
        queries: (n, d) float32.
        k: neighbours per query, 1 <= k <= m.
        batch_size: queries per FAISS call, bounding the (batch_size, k) result memory.

    Returns:
        (distances, rows): (n, k) float32 Euclidean distances, nearest first, and (n, k) int64 rows.
    """
    index = _flat(base) if isinstance(base, np.ndarray) else base
    distances = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    for start in range(0, len(queries), batch_size):
        squared, found = index.search(queries[start : start + batch_size], k)
        distances[start : start + len(found)] = euclidean(squared)
        rows[start : start + len(found)] = found
    return distances, rows


def first_to_reach(
    labels: np.ndarray, eligible: np.ndarray, support: int, class_count: int
) -> tuple[np.ndarray, np.ndarray]:
    """Walking each row of (n, k) neighbour ``labels`` nearest first, counting only
    ``eligible`` columns: the first label seen ``support`` times (the class whose support-th
    member is nearest) and the column where it got there; -1 and -1 where none does."""
    counts = np.zeros((len(labels), class_count), dtype=np.int64)
    first = np.full(len(labels), -1, dtype=np.int64)
    where = np.full(len(labels), -1, dtype=np.int64)
    at = np.arange(len(labels))
    for column in range(labels.shape[1]):
        hit = eligible[:, column]
        label = labels[:, column]
        counts[at[hit], label[hit]] += 1
        reached = hit & (first < 0) & (counts[at, label] >= support)
        first[reached], where[reached] = label[reached], column
    return first, where


class ClassPartition:
    """One FAISS index per class, answering "how far is the nearest stored member of C?".

    Search is exact (a flat index per class) unless a call gives ``nprobe``: then it runs in an
    IVF index per class, built on first use (about sqrt(members) lists, each trained on the
    class's own members) and searched with ``nprobe`` lists per query, passed per call.

    Args:
        vectors: (m, d) float32 stored vectors.
        labels: (m,) integer class of each.
        seed: seeds the IVF lists' k-means.
    """

    def __init__(self, vectors: np.ndarray, labels: np.ndarray, seed: int = 0) -> None:
        labels = np.asarray(labels)
        self.rows: dict[int, np.ndarray] = {}
        self._indexes = {}
        for label in np.unique(labels):
            rows = np.flatnonzero(labels == label)
            self.rows[int(label)] = rows
            self._indexes[int(label)] = _flat(vectors[rows])
        self.labels = labels
        self._vectors, self._seed = vectors, seed
        self._all: Any = None  # a flat index of every stored vector, built on first use
        self._ivf: dict[int, Any] = {}
        self._ivf_lock = threading.Lock()

    def lists(self, label: int) -> int:
        """IVF lists of a class's approximate index: about sqrt(members), with at least 39
        members per list (FAISS's minimum for k-means), at least 1."""
        members = len(self.rows[label])
        return max(1, min(int(np.sqrt(members)), members // 39))

    def _approximate(self, label: int) -> Any:
        with self._ivf_lock:
            if label not in self._ivf:
                self._ivf[label] = _ivf(
                    self._vectors[self.rows[label]], self.lists(label), self._seed
                )
            return self._ivf[label]

    def nearest(
        self,
        queries: np.ndarray,
        classes: np.ndarray,
        exclude_rows: np.ndarray | None = None,
        support: int = 1,
        nprobe: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The nearest stored members of each query's class.

        Args:
            queries: (n, d) float32.
            classes: (n,) the class each query is tested against; each must be stored.
            exclude_rows: (n,) optional stored row to skip per query (leave-one-out), or -1.
            support: also return the distance to the support-th nearest member (a class with
                fewer members gives its farthest one).
            nprobe: search each class's IVF index, visiting this many lists (None: exact).

        Returns:
            (nearest, rows, support_distances): (n,) float32 Euclidean distance to the nearest
            member (inf when the class has no other member), (n,) int64 its stored row (-1 when
            none), and (n,) float32 distance to the support-th nearest member.
        """
        classes = np.asarray(classes)
        extra = 0 if exclude_rows is None else 1
        squared, rows = self._search(queries, classes, support + extra, nprobe)
        sizes = np.array([len(self.rows.get(int(c), ())) for c in classes], dtype=np.int64)
        if exclude_rows is not None:
            excluded = np.asarray(exclude_rows)
            own = rows == excluded[:, None]
            # Move the excluded row (if found) to the end, as "no neighbour".
            squared = np.where(own, np.inf, squared)
            rows = np.where(own, -1, rows)
            order = np.argsort(squared, axis=1, kind="stable")
            squared = np.take_along_axis(squared, order, axis=1)[:, :support]
            rows = np.take_along_axis(rows, order, axis=1)[:, :support]
            sizes -= self._is_member(excluded, classes)
        distances = euclidean(squared)
        # The support-th member, or a smaller class's farthest; a member the search did not
        # reach (an IVF search visits some lists only) counts as infinitely far.
        needed = np.clip(np.minimum(support, sizes), 1, support)
        kth = np.where(sizes > 0, distances[np.arange(len(needed)), needed - 1], np.inf)
        return distances[:, 0].astype(np.float32), rows[:, 0], kth.astype(np.float32)

    def _is_member(self, rows: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """(n,) 1 where stored row rows[i] (-1: none) is a member of classes[i], else 0."""
        labels: np.ndarray = self.labels[np.maximum(rows, 0)]
        return np.asarray((rows >= 0) & (labels == classes), dtype=np.int64)

    def nearer_class(
        self,
        queries: np.ndarray,
        classes: np.ndarray,
        support_distances: np.ndarray,
        support: int = 1,
        nprobe: int | None = None,
        exclude_rows: np.ndarray | None = None,
        scales: np.ndarray | None = None,
    ) -> np.ndarray:
        """For each claim "queries[i] is of classes[i]", another class that has at least
        ``support`` stored members nearer than ``support_distances[i]`` (the claimed class's
        support-th member), or -1 when none has: the claimed class is the nearest class. Of
        several, the one whose support-th member is nearest.

        It looks among the query's nearest stored vectors of any class (``neighbours``): enough
        of them that, with ``support`` members needed, some class must reach it (at most
        ``MAX_RIVAL_NEIGHBOURS``; beyond that a class not seen counts as farther).
        ``exclude_rows`` (n,) skips one stored row per query (leave-one-out), or -1.

        ``scales`` (one per class, e.g. its threshold) compares distances divided by their
        class's scale (``vote.vote_scales``). A class of a wider scale than the narrowest is
        also searched on its own: it can be nearer in scale from beyond the neighbours (the
        class named is then a nearer one, not always the nearest).
        """
        classes = np.asarray(classes)
        found = np.full(len(classes), -1, dtype=np.int64)
        todo = np.flatnonzero(np.isfinite(support_distances))
        total = len(self.labels)
        if not todo.size or total < 2:
            return found
        k = min(total, len(self.rows) * (support - 1) + 1, MAX_RIVAL_NEIGHBOURS)
        k = min(total, k + (exclude_rows is not None))
        class_count = int(self.labels.max()) + 1
        for start in range(0, todo.size, DEFAULT_QUERY_BATCH):
            part = todo[start : start + DEFAULT_QUERY_BATCH]
            squared, rows = self.neighbours(queries[part], k, nprobe)
            labels = self.labels[np.maximum(rows, 0)]
            distances, reach = euclidean(squared), support_distances[part, None]
            if scales is not None:
                distances, reach = distances / scales[labels], reach / scales[classes[part], None]
            nearer = (rows >= 0) & (labels != classes[part, None]) & (distances < reach)
            if exclude_rows is not None:
                nearer &= rows != np.asarray(exclude_rows)[part, None]
            found[part] = first_to_reach(labels, nearer, support, class_count)[0]
        if scales is None:
            return found
        # The narrowest classes need no more: one nearer in scale has its support-th member
        # within the neighbours, unless a wider class has as many members nearer still.
        reach = support_distances / scales[classes]
        stored = sorted(self.rows)
        for label in stored:
            if scales[label] <= scales[stored].min() or len(self.rows[label]) < support:
                continue
            open_ = np.flatnonzero((found < 0) & np.isfinite(reach) & (classes != label))
            if not open_.size:
                continue
            skip = None if exclude_rows is None else np.asarray(exclude_rows)[open_]
            claimed = np.full(open_.size, label, dtype=np.int64)
            _, _, theirs = self.nearest(queries[open_], claimed, skip, support, nprobe)
            found[open_[theirs / scales[label] < reach[open_]]] = label
        return found

    def neighbours(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) squared distances and stored rows (-1: none) of each query's k nearest stored
        vectors of any class, by exact search."""
        with self._ivf_lock:
            if self._all is None:
                self._all = _flat(self._vectors)
        squared, rows = self._all.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return np.where(rows >= 0, squared, np.inf), rows

    def search(
        self, queries: np.ndarray, classes: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest stored members of each query's class, nearest first.

        Args:
            queries: (n, d) float32.
            classes: (n,) the class searched for each query; each must be stored.
            k: members per query (a class with fewer gives inf / -1 past its size).
            nprobe: search each class's IVF index, visiting this many lists (None: exact).

        Returns:
            (distances, rows): (n, k) float32 Euclidean distances and (n, k) int64 stored rows.
        """
        squared, rows = self._search(queries, classes, k, nprobe)
        return euclidean(squared).astype(np.float32), rows

    def _search(
        self, queries: np.ndarray, classes: np.ndarray, k: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(n, k) squared distances and rows of each query's class members (inf / -1 padded)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        classes = np.asarray(classes)
        squared = np.full((len(queries), k), np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for label in np.unique(classes):
            where = np.flatnonzero(classes == label)
            width = min(k, len(self.rows[int(label)]))
            found_squared, found = self._search_class(int(label), queries[where], width, nprobe)
            squared[where, :width] = np.where(found >= 0, found_squared, np.inf)
            rows[where, :width] = found
        return squared, rows

    def _search_class(
        self, label: int, queries: np.ndarray, width: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(squared distances, stored rows or -1) of the ``width`` nearest members of a class."""
        if nprobe is None:
            found_squared, local = self._indexes[label].search(queries, width)
        else:
            found_squared, local = self._approximate(label).search(
                queries, width, params=ivf_parameters(nprobe)
            )
        return found_squared, np.where(local >= 0, self.rows[label][np.maximum(local, 0)], -1)


class SelectorPartition(ClassPartition):
    """Class-restricted search in a big IVF index itself: no copy of the vectors.

    ``ClassPartition`` keeps a copy of every class's vectors, which doubles the memory of an
    index of millions. Here each class is a bitmap over the IVF index's own entries (one bit
    per stored vector: 125 kB per class at a million), passed with each search as a FAISS
    ``IDSelectorBitmap`` so that the lists visited yield only members; the IVF index is searched
    under its id map, whose ids are translated once here rather than per entry scanned. Searches
    visit ``nprobe`` lists (the call's, else ``default_nprobe``): approximate, like every IVF
    search.

    Args:
        index: the FAISS index of an IVF type, in an id map whose ids are ``ids``.
        ids: (m,) int64 stored ids, increasing; row r holds id ids[r].
        labels: (m,) class of each row.
        default_nprobe: lists visited when a call gives no nprobe.
    """

    def __init__(
        self, index: Any, ids: np.ndarray, labels: np.ndarray, default_nprobe: int
    ) -> None:
        import faiss

        labels = np.asarray(labels)
        self._inner: Any = faiss.downcast_index(index.index)
        # The IVF index's own entry numbers, and the stored row each one is.
        self._row_of = np.searchsorted(np.asarray(ids), faiss.vector_to_array(index.id_map))
        self.default_nprobe = default_nprobe
        self.rows = {}
        self.labels = labels
        self._bitmaps: dict[int, np.ndarray] = {}  # the selectors point into these: keep them
        self._selectors: dict[int, Any] = {}
        entry_labels = labels[self._row_of]
        for label in np.unique(labels):
            self.rows[int(label)] = np.flatnonzero(labels == label)
            # FAISS reads bit (entry & 7) of byte (entry >> 3).
            bitmap = np.packbits(entry_labels == label, bitorder="little")
            self._bitmaps[int(label)] = bitmap
            self._selectors[int(label)] = faiss.IDSelectorBitmap(
                len(bitmap), faiss.swig_ptr(bitmap)
            )

    def lists(self, label: int) -> int:
        return int(self._inner.nlist)

    def neighbours(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``ClassPartition.neighbours`` in the IVF index itself, visiting ``nprobe`` lists (the
        call's, else ``default_nprobe``)."""
        params = ivf_parameters(int(nprobe or self.default_nprobe))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        squared, entries = self._inner.search(queries, k, params=params)
        rows = np.where(entries >= 0, self._row_of[np.maximum(entries, 0)], -1)
        return np.where(entries >= 0, squared, np.inf), rows

    def _search_class(
        self, label: int, queries: np.ndarray, width: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        params = faiss.SearchParametersIVF(  # type: ignore[call-arg]
            sel=self._selectors[label], nprobe=int(nprobe or self.default_nprobe)
        )
        found_squared, entries = self._inner.search(queries, width, params=params)
        return found_squared, np.where(entries >= 0, self._row_of[np.maximum(entries, 0)], -1)


class GraphPartition(ClassPartition):
    """Class-restricted search for an index of an HNSW type: an HNSW graph per class.

    ``ClassPartition`` scans every member of a class for each claim, which at a million stored
    vectors (100,000 per class) costs milliseconds a claim. Here each class has its own FAISS
    HNSW graph over its members (``siamindex.graphs``: kept in the bundle) and the unrestricted
    search of the nearest-class rule walks the index's own graph, both ``ef_search`` wide:
    approximate, like every search of an HNSW index.

    Args:
        index: the FAISS index of an HNSW type, in an id map whose ids are ``ids``.
        ids: (m,) int64 stored ids, increasing; row r holds id ids[r].
        labels: (m,) class of each row.
        graphs: class -> its graph, whose i-th vector is the class's i-th row.
        ef_search: search breadth (``tuned`` gives a copy with another).
    """

    def __init__(
        self,
        index: Any,
        ids: np.ndarray,
        labels: np.ndarray,
        graphs: dict[int, Any],
        ef_search: int,
    ) -> None:
        labels = np.asarray(labels)
        self._index, self._ids, self._graphs = index, np.asarray(ids), graphs
        self.ef_search = ef_search
        self.labels = labels
        self.rows = {int(label): np.flatnonzero(labels == label) for label in np.unique(labels)}

    def tuned(self, ef_search: int) -> GraphPartition:
        """The same graphs searched with another breadth (for one call's setting)."""
        other = copy.copy(self)
        other.ef_search = ef_search
        return other

    def neighbours(
        self, queries: np.ndarray, k: int, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``ClassPartition.neighbours`` in the index's own graph."""
        params = hnsw_parameters(max(self.ef_search, k))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        squared, ids = self._index.search(queries, k, params=params)
        rows = np.where(ids >= 0, np.searchsorted(self._ids, ids), -1)
        return np.where(ids >= 0, squared, np.inf), rows

    def _search_class(
        self, label: int, queries: np.ndarray, width: int, nprobe: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        params = hnsw_parameters(max(self.ef_search, width))
        found_squared, local = self._graphs[label].search(queries, width, params=params)
        return found_squared, np.where(local >= 0, self.rows[label][np.maximum(local, 0)], -1)
