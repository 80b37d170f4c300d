"""Looking after an index's labels: thresholds for classes added late, and stored images whose
label disagrees with their neighbourhood (``audit``).

Everything here works on an ``IndexStore`` and returns a new one or plain results; ``Index``
publishes the changes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from siamindex.defaults import LATE_CLASS_MIN_MEMBERS
from siamindex.errors import DataError
from siamindex.evaluation import calibrate_class
from siamindex.query import Added
from siamindex.search import ClassPartition
from siamindex.store import IndexStore

DEFAULT_AUDIT_NEIGHBOURS = 10


def with_late_class(store: IndexStore, class_name: str) -> IndexStore:
    """A copy that knows ``class_name`` as a class added after the build (the store itself
    when it knows the class already, from the build or a change before)."""
    if class_name in store.class_names:
        return store
    store = store.with_class(class_name)
    facts = replace(store.facts, late_classes=(*store.facts.late_classes, class_name))
    return replace(store, facts=facts)


def recalibrate(store: IndexStore, class_names: Iterable[str], seed: int = 0) -> IndexStore:
    """A copy where each named late class has its own threshold calibrated on its current
    members (``evaluation.calibrate_class``), or none (NaN: the global one applies) while it
    has too few. Classes that are not late keep the threshold of the build."""
    thresholds = store.class_thresholds.astype(np.float64).copy()
    for name in sorted(set(class_names) & set(store.facts.late_classes)):
        label = store.class_names.index(name)
        found = calibrate_class(
            store.rows.embeddings,
            store.rows.labels,
            label,
            np.random.default_rng(seed),
            support=store.facts.support,
        )
        thresholds[label] = np.nan if found is None else found
    return replace(store, class_thresholds=thresholds)


def stored_ids(store: IndexStore, ids: Sequence[int] | np.ndarray, where: object) -> np.ndarray:
    """The distinct ids given, all stored in the index at ``where``.

    Raises:
        DataError: an id is not in the index.
    """
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    try:
        store.rows_of(ids)
    except KeyError as exc:
        raise DataError(
            f"Id(s) {exc.args[0]} are not in index '{where}'; see `siamindex info`."
        ) from None
    return ids


def added(store: IndexStore, index: str, class_name: str, ids: np.ndarray) -> Added:
    """What ``add`` reports: the new ids, and how claims about the class are now judged."""
    own = store.class_thresholds[store.class_names.index(class_name)]
    return Added(
        index,
        class_name,
        [int(i) for i in ids],
        len(store.rows),
        class_threshold=float(own) if np.isfinite(own) else None,
        threshold_note=late_class_note(store, class_name),
    )


def late_class_note(store: IndexStore, class_name: str) -> str | None:
    """One line on a late class's threshold, or None for a class of the build."""
    if class_name not in store.facts.late_classes:
        return None
    label = store.class_names.index(class_name)
    members = int(np.sum(store.rows.labels == label))
    own = store.class_thresholds[label]
    if np.isfinite(own):
        return (
            f"class '{class_name}' ({members} members, added after the build) has its own "
            f"threshold {own:.4f}, recalibrated on its members against the other classes."
        )
    return (
        f"class '{class_name}' has {members} members, fewer than {LATE_CLASS_MIN_MEMBERS} to "
        f"calibrate its own threshold; it uses the global threshold "
        f"{store.facts.threshold:.4f} until it has {LATE_CLASS_MIN_MEMBERS}."
    )


@dataclass(frozen=True)
class Suspect:
    """A stored image whose label its neighbourhood disagrees with.

    Attributes:
        id: its stored id.
        class_name: the label it is stored with.
        suggested: the other class that holds it closest (see ``suspects``).
        disagreement: the share of its k nearest stored images labelled otherwise.
        ratio: how many times farther its own label holds it than the suggested class does
            (distances to the support-th nearest member; above 1: another class is closer);
            None (most suspect) when its class has no other member.
        neighbour_ids: its k nearest stored ids, nearest first.
        neighbour_classes: their labels.
        source_index: its row in the source dataset (-1 for added images).
        split: the split it came from ("added" for added images).
    """

    id: int
    class_name: str = field(metadata={"json": "class"})
    suggested: str = ""
    disagreement: float = 0.0
    ratio: float | None = None
    neighbour_ids: tuple[int, ...] = ()
    neighbour_classes: tuple[str, ...] = ()
    source_index: int = -1
    split: str = ""


@dataclass(frozen=True)
class Audit:
    """What ``audit`` reports: the most suspect stored images first.

    Attributes:
        index: the index audited.
        k: neighbours looked at per image.
        count: stored images.
        flagged: images with at least one neighbour of another class (``suspects`` may list
            only the first of them).
    """

    index: str
    k: int
    count: int
    flagged: int
    suspects: list[Suspect]


def suspects(
    store: IndexStore,
    k: int = DEFAULT_AUDIT_NEIGHBOURS,
    support: int | None = None,
    partition: ClassPartition | None = None,
) -> list[Suspect]:
    """Stored images whose label their neighbourhood disagrees with, most suspect first.

    The rule is ``check``'s: a class holds an image as far as the index's ``support``-th
    nearest member of that class (``support`` defaults to the index's own). An image is
    suspect when another class holds it closer than its own label does (ratio above 1) or
    one of its ``k`` nearest stored images is labelled otherwise; suspects are ranked by the
    ratio (scale-free: clusters of every density are ranked alike). The
    image itself is always left out, and ``suggested`` is the class that holds it closest.
    ``partition``: the store's exact per-class indexes, if already built (``Index.partition``).

    Raises:
        DataError: k is below 1.
    """
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}; ask for 10 neighbours, say.")
    rows = store.rows
    count = len(rows)
    if count < 2 or len(np.unique(rows.labels)) < 2:
        return []
    k = min(k, count - 1)
    _, ids = store.search(rows.embeddings, k + 1)
    found = np.where(ids >= 0, store.rows_of(np.where(ids >= 0, ids, rows.ids[0])), -1)
    itself = found == np.arange(count)[:, None]
    # Each row's own neighbours without itself (the first k others, nearest first).
    order = np.argsort(itself, axis=1, kind="stable")
    neighbours = np.take_along_axis(found, order, axis=1)[:, :k]
    labels = rows.labels
    other = (neighbours >= 0) & (labels[np.maximum(neighbours, 0)] != labels[:, None])
    disagreement = other.mean(axis=1)
    partition = partition or ClassPartition(rows.embeddings, labels)
    ratio, closest = _ratios(store, partition, support or store.facts.support)
    flagged = np.flatnonzero((disagreement > 0) | (ratio > 1))
    ranked = flagged[np.argsort(-ratio[flagged], kind="stable")]
    names = store.class_names
    return [
        Suspect(
            id=int(rows.ids[row]),
            class_name=names[labels[row]],
            suggested=names[closest[row]],
            disagreement=float(disagreement[row]),
            ratio=float(ratio[row]) if np.isfinite(ratio[row]) else None,
            neighbour_ids=tuple(int(i) for i in rows.ids[near]),
            neighbour_classes=tuple(names[c] for c in labels[near]),
            source_index=int(rows.source_index[row]),
            split=str(rows.split[row]),
        )
        for row in ranked.tolist()
        for near in [neighbours[row][neighbours[row] >= 0]]
    ]


def _ratios(
    store: IndexStore, partition: ClassPartition, support: int
) -> tuple[np.ndarray, np.ndarray]:
    """For every stored row: the distance to the ``support``-th nearest member of its own class
    (itself left out) over the least such distance among the other classes, and that class.
    Exact, one class at a time."""
    labels = store.rows.labels
    vectors = store.rows.embeddings
    everyone = np.arange(len(labels))
    _, _, own = partition.nearest(vectors, labels, exclude_rows=everyone, support=support)
    best = np.full(len(labels), np.inf, dtype=np.float32)
    closest = np.full(len(labels), -1, dtype=np.int64)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels != label)
        _, _, held = partition.nearest(vectors[rows], np.full(len(rows), label), support=support)
        closer = held < best[rows]
        best[rows[closer]], closest[rows[closer]] = held[closer], label
    tiny = 1e-6  # duplicates lie at distance 0
    return (np.asarray(own, np.float64) + tiny) / (np.asarray(best, np.float64) + tiny), closest


def suspects_figure(store: IndexStore, listed: list[Suspect], path: Path) -> None:
    """Draw each suspect (first column, its label and the suggested one) beside its
    neighbours (with their labels) into a PNG, written whole or not at all.

    Raises:
        DataError: the bundle keeps no pixels (built before stored images), or none listed.
    """
    if not listed:
        raise DataError("No suspects to draw: no stored image disagrees with its neighbours.")
    shown = [[s.id, *s.neighbour_ids] for s in listed]
    pixels = store.image_rows(store.rows_of(np.concatenate(shown)))
    if pixels is None:
        raise DataError(
            "This index keeps no stored pixels to draw (built before they were stored); "
            "rebuild it with build-index, or leave out --figure."
        )
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(row) for row in shown)
    figure, axes = plt.subplots(
        len(listed), columns, figsize=(1.1 * columns, 1.25 * len(listed)), squeeze=False
    )
    at = 0
    for axes_row, suspect, ids in zip(axes, listed, shown, strict=True):
        labels = [f"{suspect.class_name}? {suspect.suggested}", *suspect.neighbour_classes]
        for column, ax in enumerate(axes_row):
            ax.axis("off")
            if column < len(ids):
                ax.imshow(pixels[at + column], cmap="gray", vmin=0, vmax=255)
                colour = "crimson" if column == 0 else "black"
                ax.set_title(f"{ids[column]}: {labels[column]}", fontsize=6, color=colour)
        at += len(ids)
    figure.suptitle("Stored images whose neighbours disagree (left: stored label? suggested)")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, dpi=110, format="png")
    plt.close(figure)
    temporary.replace(path)
