"""Nearest-match queries, group-membership checks and pair comparisons, on vectors.

Everything here takes embeddings, not images (the ``Index`` methods embed first), so it runs
without TensorFlow and can be tested with any vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from siamindex import metrics
from siamindex.search import ClassPartition
from siamindex.store import IndexStore


@dataclass(frozen=True)
class Match:
    """One stored image found for a query."""

    query: str
    rank: int
    id: int
    label: str
    split: str
    distance: float


@dataclass(frozen=True)
class QueryResult:
    """The k nearest stored images of one query, and the verdict.

    ``predicted`` is the class of the nearest match, or None ("no match") when even the nearest
    is farther than ``threshold``: the query looks like nothing stored (open set).
    """

    query: str
    predicted: str | None
    distance: float
    threshold: float
    matches: list[Match]


@dataclass(frozen=True)
class MembershipResult:
    """The answer to the claim "``query`` belongs to class ``group``".

    ``distance`` and ``nearest_id`` are of the nearest stored member of the class;
    ``support_distance`` is the distance to its ``support``-th nearest member, and the claim holds
    (``is_member``) when that is within ``threshold``: at least ``support`` members are that near.
    """

    query: str
    group: str
    is_member: bool
    distance: float
    threshold: float
    threshold_kind: str
    nearest_id: int
    support_distance: float
    support: int
    true_label: str | None = None


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
    distances, ids = store.search(vectors, k, nprobe=nprobe, ef_search=ef_search)
    found = ids >= 0
    rows = np.where(found, store.rows_of(np.where(found, ids, store.rows.ids[0])), -1)
    threshold = store.threshold
    first = np.where(found[:, 0], store.rows.labels[np.maximum(rows[:, 0], 0)], 0)
    _, _, support_distances = partition.nearest(
        vectors, first, support=int(store.attrs.get("support", 1))
    )
    results = []
    for q, name in enumerate(names):
        matches = [
            Match(
                query=name,
                rank=rank + 1,
                id=int(ids[q, rank]),
                label=store.class_names[store.rows.labels[rows[q, rank]]],
                split=str(store.rows.split[rows[q, rank]]),
                distance=float(distances[q, rank]),
            )
            for rank in range(k)
            if found[q, rank]
        ]
        close = bool(matches) and support_distances[q] <= threshold
        results.append(
            QueryResult(
                query=name,
                predicted=matches[0].label if close else None,
                distance=matches[0].distance if matches else float("inf"),
                threshold=threshold,
                matches=matches,
            )
        )
    return results


def check_membership(
    store: IndexStore,
    partition: ClassPartition,
    vectors: np.ndarray,
    names: Sequence[str],
    groups: np.ndarray,
    per_class: bool = False,
    true_labels: np.ndarray | None = None,
) -> list[MembershipResult]:
    """Answer claims "vector i belongs to class groups[i]": true when the index's ``support``
    nearest stored members of that class (searched in the class's own exact sub-index) all lie
    within the threshold.

    Args:
        store: the index (for thresholds, class names and ids).
        partition: exact per-class sub-indexes over the store's embeddings.
        vectors: (n, embedding_dim) float32.
        names: (n,) query names.
        groups: (n,) int class index claimed for each vector.
        per_class: use each class's calibrated threshold (falling back to the global one).
        true_labels: (n,) optional int class index of the truth (-1: unknown).
    """
    support = int(store.attrs.get("support", 1))
    distances, rows, support_distances = partition.nearest(vectors, groups, support=support)
    thresholds = np.full(len(groups), store.threshold)
    kinds = np.full(len(groups), "global", dtype=object)
    if per_class:
        own = store.class_thresholds[groups]
        calibrated = np.isfinite(own)
        thresholds = np.where(calibrated, own, thresholds)
        kinds[calibrated] = "per-class"
    ids = np.where(rows >= 0, store.rows.ids[np.maximum(rows, 0)], -1)
    names_of = store.class_names
    return [
        MembershipResult(
            query=names[i],
            group=names_of[groups[i]],
            is_member=bool(support_distances[i] <= thresholds[i]),
            distance=float(distances[i]),
            threshold=float(thresholds[i]),
            threshold_kind=str(kinds[i]),
            nearest_id=int(ids[i]),
            support_distance=float(support_distances[i]),
            support=support,
            true_label=None
            if true_labels is None or true_labels[i] < 0
            else names_of[true_labels[i]],
        )
        for i in range(len(groups))
    ]


def membership_summary(results: Sequence[MembershipResult]) -> dict[str, object] | None:
    """Accuracy, precision, recall, F1 and confusion counts of claims whose truth is known,
    overall and per claimed class; None when no claim carries its true label."""
    known = [r for r in results if r.true_label is not None]
    if not known:
        return None
    predicted = np.array([r.is_member for r in known])
    actual = np.array([r.group == r.true_label for r in known])
    groups = np.array([r.group for r in known])
    return {
        "claims": len(known),
        **metrics.classification_summary(predicted, actual),
        "per_class": {
            str(group): metrics.classification_summary(
                predicted[groups == group], actual[groups == group]
            )
            for group in sorted(set(groups.tolist()), key=lambda g: (len(g), g))
        },
    }


def compare(
    first: np.ndarray, second: np.ndarray, names: tuple[str, str], threshold: float
) -> Comparison:
    """Euclidean distance between two (embedding_dim,) vectors, "same" if < threshold (the
    article's pair rule)."""
    distance = float(np.linalg.norm(np.asarray(first, np.float64) - np.asarray(second, np.float64)))
    return Comparison(names[0], names[1], distance, threshold, distance < threshold)
