"""The nearest-class rule: which class a query is nearest to, and whether another class
outvotes a claim.

Under the index's "nearest-class" rule a claim holds only when no other class has ``support``
stored members nearer than the claimed class's support-th member. Classes are compared in
scale: each class's distances divided by its threshold, the global one for the classes of the
build and its own for a class added later whose own is wider (``vote_scales``), so that a
late class of a few members, sparser, is not outvoted by a crowded one for being sparse.
"""

from __future__ import annotations

import numpy as np

from siamindex.defaults import NEAREST_CLASS_RULE
from siamindex.search import MAX_RIVAL_NEIGHBOURS, ClassPartition
from siamindex.store import IndexStore


def vote_width(store: IndexStore) -> int:
    """How many nearest stored images of any class decide the nearest-class vote, when one
    exact search of that many answers a query outright (0 when it does not: another rule, an
    approximate index type, or a class with fewer members than the support, which only the
    per-class search answers, or late classes with thresholds of their own, which the vote
    compares in scale). Some class must reach ``support`` among classes x (support - 1)
    + 1 of them; the one that gets there first is the class whose support-th member is
    nearest, and the rule accepts no other."""
    support = store.facts.support
    present = store.class_counts[store.class_counts > 0]
    width = len(present) * (support - 1) + 1
    if (
        store.facts.rule != NEAREST_CLASS_RULE
        or store.facts.index_type != "flat"
        or (present < support).any()
        or width > min(MAX_RIVAL_NEIGHBOURS, len(store.rows))
        or vote_scales(store) is not None
    ):
        return 0
    return width


def nearest_class(
    store: IndexStore,
    partition: ClassPartition,
    vectors: np.ndarray,
    first: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The class a query is answered with, from the nearest match's (``first``), and its
    support distance (infinite when the rule rejects it). Under the "nearest-class" rule a class
    with ``support`` members nearer than the nearest match's class takes its place (a stray
    3 among the 5s makes the nearest match a 3, but the query is as near as that to the 5s).
    Weighed in scale, the nearer class named is not always the nearest, so the move repeats
    (each one to a class nearer in scale) until no class is nearer."""
    support = store.facts.support
    _, _, found = partition.nearest(vectors, first, support=support)
    reach, _ = claim_thresholds(store, first)
    nearer = nearer_classes(store, partition, vectors, first, found, reach)
    scales = vote_scales(store)
    first, found = first.copy(), found.copy()
    moved = np.flatnonzero(nearer >= 0)
    for _ in range(1 if scales is None else len(store.class_names)):
        if not moved.size:
            break
        first[moved] = nearer[moved]
        _, _, found[moved] = partition.nearest(vectors[moved], first[moved], support=support)
        nearer = np.full(len(first), -1, dtype=np.int64)
        nearer[moved] = partition.nearer_class(
            vectors[moved], first[moved], found[moved], support, scales=scales
        )
        moved = np.flatnonzero(nearer >= 0)
    found[moved] = np.inf  # still outvoted
    return first, found


def nearer_classes(
    store: IndexStore,
    partition: ClassPartition,
    vectors: np.ndarray,
    classes: np.ndarray,
    support_distances: np.ndarray,
    thresholds: np.ndarray | float,
    nprobe: int | None = None,
) -> np.ndarray:
    """Under the "nearest-class" rule, each claim's nearer class (-1: none), looked for only
    where it can change the answer or its probability (``rival_reach``: the search is
    unrestricted, the costly part); all -1 under the distance rule."""
    nearer = np.full(len(classes), -1, dtype=np.int64)
    if store.facts.rule != NEAREST_CLASS_RULE:
        return nearer
    within = np.flatnonzero(support_distances <= rival_reach(store, thresholds))
    nearer[within] = partition.nearer_class(
        vectors[within],
        classes[within],
        support_distances[within],
        store.facts.support,
        nprobe,
        scales=vote_scales(store),
    )
    return nearer


def claim_thresholds(
    store: IndexStore, classes: np.ndarray, per_class: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The threshold a claim about each class is judged by, and where it is the class's own:
    a class added after the build has its own once calibrated (the global one was never
    fitted on it); every class does when ``per_class`` asks; the rest take the global one."""
    late = [store.class_names.index(name) for name in store.facts.late_classes]
    own = store.class_thresholds[classes]
    judged = np.isfinite(own) & (per_class | np.isin(classes, late))
    return np.where(judged, own, store.facts.threshold), judged


def vote_scales(store: IndexStore) -> np.ndarray | None:
    """Each class's scale in the nearest-class vote (``ClassPartition.nearer_class``): a class
    added after the build whose own threshold is wider than the global one (it has few
    members, so lies sparse) is compared in it; the others share the global threshold. A late
    class with a narrower threshold is no sparse class, and weighing it in that only cost F1
    (chosen on train digits 6-9 held out from a 0-5 index, README "Classes the encoder never
    saw"). None when all classes share one scale (the vote is then by plain distance)."""
    threshold = float(store.facts.threshold)
    scales = np.full(len(store.class_names), threshold)
    late = np.array([store.class_names.index(n) for n in store.facts.late_classes], np.int64)
    own = store.class_thresholds[late] if late.size else np.empty(0)
    judged = np.isfinite(own) & (own > threshold)
    scales[late[judged]] = own[judged]
    if not (np.isfinite(threshold) and threshold > 0) or (scales == threshold).all():
        return None
    return scales


def rival_reach(store: IndexStore, thresholds: np.ndarray | float) -> np.ndarray:
    """How far a claim's support distance may be for a nearer class to matter: its threshold,
    or farther where the membership probability still falls (beyond, a claim's probability is
    the curve's last value whether another class is nearer or not)."""
    if store.probability is None:
        return np.asarray(thresholds)
    distances, chances = store.probability
    flat = np.flatnonzero(chances == chances[-1])[0]  # where the curve reaches its last value
    return np.asarray(np.maximum(thresholds, distances[flat]))
