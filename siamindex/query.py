"""Nearest-match queries, class-membership checks and pair comparisons, on vectors.

Everything here takes embeddings, not images (the ``Index`` methods embed first), so it runs
without TensorFlow and can be tested with any vectors.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass, replace
from operator import attrgetter
from typing import Any

import numpy as np

from siamindex import metrics, vote
from siamindex.search import ClassPartition, first_to_reach
from siamindex.store import IndexStore

# Python cannot name an attribute "class"; JSON and CSV output can, and do.
_CLASS = {"json": "class"}


def to_json(value: Any) -> Any:
    """A result (dataclass, or lists and dicts of them) as JSON values; class_name is "class"."""
    if type(value) in _PLAIN:
        return value
    if isinstance(value, list | tuple):
        return [to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if is_dataclass(value) and not isinstance(value, type):
        keys, values = _json_fields(type(value))
        pairs = zip(keys, values(value), strict=False)  # drops the class at the end
        return {k: v if type(v) in _PLAIN else to_json(v) for k, v in pairs}
    return value


_PLAIN = frozenset({str, int, float, bool, type(None)})


@functools.cache  # fields() per object was most of the time of 20,000 check results
def _json_fields(kind: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """JSON names, and one call giving the field values (and class: a tuple, always)."""
    keys = tuple(f.metadata.get("json", f.name) for f in fields(kind))
    return keys, attrgetter(*(f.name for f in fields(kind)), "__class__")


@dataclass(frozen=True)
class Match:
    """One stored image found for a query."""

    query: str
    rank: int
    id: int
    class_name: str = field(metadata=_CLASS)
    split: str
    distance: float


@dataclass(frozen=True)
class QueryResult:
    """The k nearest stored images of one query, and the verdict.

    ``predicted`` is the class the query is answered with, or None ("no match") when the
    membership claim for it does not hold: the query looks like nothing stored (open set). That
    class is the nearest match's, or, under the "nearest-class" rule, the class whose support-th
    nearest member is nearest (usually the same). ``probability`` is the calibrated probability
    that the query belongs to that class (None for indexes built before it was calibrated).
    """

    query: str
    predicted: str | None
    distance: float
    threshold: float
    matches: list[Match]
    probability: float | None = None

    def named(self, query: str) -> QueryResult:
        """The same result for a query called ``query``."""
        matches = [replace(match, query=query) for match in self.matches]
        return replace(self, query=query, matches=matches)


@dataclass(frozen=True)
class MembershipResult:
    """The answer to the claim "``query`` belongs to class ``class_name``".

    ``distance`` and ``nearest_id`` are of the nearest stored member of the class;
    ``support_distance`` is the distance to its ``support``-th nearest member, and the claim holds
    (``is_member``) when that is within ``threshold``: at least ``support`` members are that near,
    and, under the index's "nearest-class" rule, no other class has as many members nearer
    (``nearer_class`` names the nearest such class; the claim is then rejected). A nearer class
    is only looked for where it can change the answer (within the threshold, or where the
    probability still falls with distance); beyond, ``nearer_class`` is None.
    ``probability`` is the calibrated probability that the claim is true, fitted at build time
    on claims about stored images (None for indexes built before it).
    """

    query: str
    class_name: str = field(metadata=_CLASS)
    is_member: bool
    distance: float
    threshold: float
    threshold_kind: str
    nearest_id: int
    support_distance: float
    support: int
    true_class: str | None = None
    probability: float | None = None
    nearer_class: str | None = None


@dataclass(frozen=True)
class Added:
    """Images added to an index: their new ids, and the index's size after."""

    index: str
    class_name: str = field(metadata=_CLASS)
    ids: list[int] = field(default_factory=list)
    count: int = 0
    class_threshold: float | None = None  # the class's own threshold, if it has one
    threshold_note: str | None = None  # for a class added after the build: how it is judged


@dataclass(frozen=True)
class Relabelled:
    """Ids stored under a new class, and the index's size."""

    index: str
    class_name: str = field(metadata=_CLASS)
    relabelled: list[int] = field(default_factory=list)
    count: int = 0


@dataclass(frozen=True)
class Removed:
    """Ids removed from an index, and the index's size after."""

    index: str
    removed: list[int]
    count: int


@dataclass(frozen=True)
class Comparison:
    """Distance between two images and the verdict at the threshold (the article's use)."""

    first: str
    second: str
    distance: float
    threshold: float
    same: bool


def nearest(
    store: IndexStore,
    partition: ClassPartition,
    vectors: np.ndarray,
    names: Sequence[str],
    k: int,
    nprobe: int | None = None,
    ef_search: int | None = None,
) -> list[QueryResult]:
    """The k nearest stored images of each query vector, and its predicted class.

    The prediction is the class of the nearest match, kept only when the membership claim
    "the query belongs to that class" holds (the same rule as ``check_membership``); otherwise
    it is None, "no match" (open set).

    Args:
        store: the index.
        partition: exact per-class sub-indexes over the store's embeddings.
        vectors: (n, embedding_dim) float32 query embeddings.
        names: (n,) how to refer to each query in the results.
        k: matches per query, 1 <= k <= stored count.
        nprobe, ef_search: search settings for IVF / HNSW index types.
    """
    width = vote.vote_width(store) if nprobe is None and ef_search is None else 0
    distances, ids = store.search(vectors, max(k, width), nprobe=nprobe, ef_search=ef_search)
    found = ids >= 0
    rows = np.where(found, store.rows_of(np.where(found, ids, store.rows.ids[0])), -1)
    first = np.where(found[:, 0], store.rows.labels[np.maximum(rows[:, 0], 0)], 0)
    if width:  # one exact search gave the matches and the vote
        labels = store.rows.labels[np.maximum(rows[:, :width], 0)]
        winner, column = first_to_reach(
            labels, found[:, :width], store.facts.support, len(store.class_names)
        )
        at = np.arange(len(winner))
        support_distances = np.where(winner >= 0, distances[at, np.maximum(column, 0)], np.inf)
        first = np.where(winner >= 0, winner, first)
        distances, ids, found, rows = (a[:, :k] for a in (distances, ids, found, rows))
    else:
        first, support_distances = vote.nearest_class(store, partition, vectors, first)
    chances = _probabilities(store, support_distances)
    thresholds, _ = vote.claim_thresholds(store, first)  # as check judges a claim of it
    results = []
    for q, name in enumerate(names):
        matches = [
            Match(
                query=name,
                rank=rank + 1,
                id=int(ids[q, rank]),
                class_name=store.class_names[store.rows.labels[rows[q, rank]]],
                split=str(store.rows.split[rows[q, rank]]),
                distance=float(distances[q, rank]),
            )
            for rank in range(k)
            if found[q, rank]
        ]
        close = bool(matches) and support_distances[q] <= thresholds[q]
        probability = None if chances is None else float(chances[q])
        results.append(
            QueryResult(
                query=name,
                predicted=store.class_names[first[q]] if close else None,
                distance=matches[0].distance if matches else float("inf"),
                threshold=float(thresholds[q]),
                matches=matches,
                probability=probability if matches else None,
            )
        )
    return results


def check_membership(
    store: IndexStore,
    partition: ClassPartition,
    vectors: np.ndarray,
    names: Sequence[str],
    classes: np.ndarray,
    per_class: bool = False,
    true_labels: np.ndarray | None = None,
    nprobe: int | None = None,
) -> list[MembershipResult]:
    """Answer claims "vector i belongs to class classes[i]": true when the index's ``support``
    nearest stored members of that class (searched in the class's own sub-index, exactly unless
    ``nprobe`` is given) all lie within the threshold.

    Args:
        store: the index (for thresholds, class names and ids).
        partition: exact per-class sub-indexes over the store's embeddings.
        vectors: (n, embedding_dim) float32.
        names: (n,) query names.
        classes: (n,) int class position claimed for each vector.
        per_class: use each class's calibrated threshold (falling back to the global one);
            classes added after the build use theirs in any case.
        true_labels: (n,) optional int class position of the truth (-1: unknown).
        nprobe: search each class's IVF sub-index with this many lists (approximate, faster).
    """
    support = store.facts.support
    distances, rows, support_distances = partition.nearest(
        vectors, classes, support=support, nprobe=nprobe
    )
    thresholds, judged = vote.claim_thresholds(store, classes, per_class)
    kinds = np.where(judged, "per-class", "global").astype(object)
    nearer = vote.nearer_classes(
        store, partition, vectors, classes, support_distances, thresholds, nprobe
    )
    ids = np.where(rows >= 0, store.rows.ids[np.maximum(rows, 0)], -1)
    names_of = store.class_names
    chances = _probabilities(store, np.where(nearer >= 0, np.inf, support_distances))
    return [
        MembershipResult(
            query=names[i],
            class_name=names_of[classes[i]],
            is_member=bool(support_distances[i] <= thresholds[i] and nearer[i] < 0),
            distance=float(distances[i]),
            threshold=float(thresholds[i]),
            threshold_kind=str(kinds[i]),
            nearest_id=int(ids[i]),
            support_distance=float(support_distances[i]),
            support=support,
            true_class=None
            if true_labels is None or true_labels[i] < 0
            else names_of[true_labels[i]],
            probability=None if chances is None else float(chances[i]),
            nearer_class=names_of[nearer[i]] if nearer[i] >= 0 else None,
        )
        for i in range(len(classes))
    ]


CHECK_CSV_HEADER = [
    "image",
    "class",
    "member",
    "distance",
    "support_distance",
    "threshold",
    "threshold_kind",
    "nearest_id",
    "true_class",
    "probability",
    "nearer_class",
]


def check_row(result: MembershipResult) -> list[str]:
    """One claim's answer as ``check``'s CSV/table row (columns ``CHECK_CSV_HEADER``)."""
    r = result
    return [
        r.query,
        r.class_name,
        str(r.is_member).lower(),
        f"{r.distance:.4f}",
        f"{r.support_distance:.4f}",
        f"{r.threshold:.4f}",
        r.threshold_kind,
        str(r.nearest_id),
        r.true_class or "",
        "" if r.probability is None else f"{r.probability:.4f}",
        r.nearer_class or "",
    ]


def _probabilities(store: IndexStore, support_distances: np.ndarray) -> np.ndarray | None:
    if store.probability is None:
        return None
    return metrics.membership_probability(support_distances, store.probability)


def membership_summary(results: Sequence[MembershipResult]) -> dict[str, object] | None:
    """Accuracy, precision, recall, F1 and confusion counts of claims whose truth is known,
    overall and per claimed class; None when no claim carries its true label."""
    known = [r for r in results if r.true_class is not None]
    if not known:
        return None
    counts = ConfusionCounts()
    counts.add(
        np.array([r.class_name for r in known]),
        np.array([r.is_member for r in known]),
        np.array([r.class_name == r.true_class for r in known]),
    )
    return counts.summary()


class ConfusionCounts:
    """Running confusion counts per claimed class, so that claims checked in chunks (``bulk``)
    get the same summary as ``membership_summary`` without keeping every answer."""

    def __init__(self) -> None:
        self.per_class: dict[str, np.ndarray] = {}  # class -> [tp, fp, fn, tn]

    def add(self, claimed: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> None:
        """Count claims of known truth: claimed class, accepted?, true?"""
        for name in np.unique(claimed):
            mine = claimed == name
            p, a = predicted[mine], actual[mine]
            counts = [np.sum(p & a), np.sum(p & ~a), np.sum(~p & a), np.sum(~p & ~a)]
            total = self.per_class.setdefault(str(name), np.zeros(4, np.int64))
            total += np.array(counts, np.int64)

    def summary(self) -> dict[str, object] | None:
        """``membership_summary``'s dictionary; None when nothing was counted."""
        if not self.per_class:
            return None
        overall = sum(self.per_class.values(), np.zeros(4, np.int64))
        return {
            "claims": int(overall.sum()),
            **metrics.summary_of_counts(*map(int, overall)),
            "per_class": {
                name: metrics.summary_of_counts(*map(int, self.per_class[name]))
                for name in sorted(self.per_class, key=lambda c: (len(c), c))
            },
        }


def compare(
    first: np.ndarray, second: np.ndarray, names: tuple[str, str], threshold: float
) -> Comparison:
    """Euclidean distance between two (embedding_dim,) vectors, "same" if < threshold (the
    article's pair rule)."""
    distance = float(np.linalg.norm(np.asarray(first, np.float64) - np.asarray(second, np.float64)))
    return Comparison(names[0], names[1], distance, threshold, distance < threshold)
