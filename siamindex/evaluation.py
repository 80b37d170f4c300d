"""Held-out evaluation of embeddings: pair accuracy, retrieval accuracy, membership calibration.

Everything here works on arrays (embeddings or raw pixels) so the encoder and the raw-pixel
baseline are measured by the same code in the same run. The stored side is always the train
split and the queries the test split, so no query can find itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from siamindex import metrics
from siamindex.data import load_dataset
from siamindex.defaults import (
    ARTICLE_THRESHOLD,
    DEFAULT_SUPPORT,
    DISTANCE_RULE,
    LATE_CLASS_MIN_MEMBERS,
    NEAREST_CLASS_RULE,
    RULES,
)
from siamindex.pairs import ARTICLE_EVAL_SAME_FRACTION, make_pairs
from siamindex.search import ClassPartition, exact_search, flat_index

logger = logging.getLogger(__name__)

CALIBRATION_SAMPLE = 10_000


@dataclass(frozen=True)
class Claims:
    """Membership claims "row i belongs to class classes[i]", with the truth of each."""

    rows: np.ndarray
    classes: np.ndarray
    is_member: np.ndarray


def true_and_false_claims(labels: np.ndarray, rng: np.random.Generator) -> Claims:
    """Each row claimed once with its true class and once with a random other class."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    rows = np.arange(len(labels), dtype=np.int64)
    # A random wrong class: shift the true class's position by 1..C-1 around the class list.
    position = np.searchsorted(classes, labels)
    wrong = classes[(position + rng.integers(1, len(classes), size=len(labels))) % len(classes)]
    return Claims(
        rows=np.concatenate([rows, rows]),
        classes=np.concatenate([labels, wrong]),
        is_member=np.concatenate([np.ones(len(rows), bool), np.zeros(len(rows), bool)]),
    )


def pair_distances(vectors: np.ndarray, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Euclidean distance between rows ``left[i]`` and ``right[i]`` of ``vectors``."""
    return np.asarray(np.linalg.norm(vectors[left] - vectors[right], axis=1))


def pair_metrics(
    vectors: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    threshold: float | None,
    same_fraction: float = ARTICLE_EVAL_SAME_FRACTION,
) -> dict[str, float | None]:
    """Pair accuracy at ``threshold`` and ROC AUC on article-protocol pairs of ``vectors``."""
    pairs = make_pairs(labels, "article", rng, same_fraction=same_fraction)
    distances = pair_distances(vectors, pairs.left, pairs.right)
    return {
        "pair_accuracy": None
        if threshold is None
        else metrics.pair_accuracy(distances, pairs.is_same, threshold),
        "roc_auc": metrics.roc_auc(distances, pairs.is_same),
    }


@dataclass(frozen=True)
class Calibration:
    """A calibrated membership threshold (Euclidean distance; member if distance <= it).

    Attributes:
        threshold: the global threshold.
        f1: F1 of the calibration claims at it.
        per_class: class index -> that class's own threshold.
        method: how it was calibrated, in words.
        claims: how many claims it was fitted on.
        min_recall: the recall floor applied (None: none, or a precision target met).
        true_accepted, unlike_rejected: at the global threshold, the share of true claims
            accepted and of non-digit claims rejected (None without non-digits).
        probability: (2, m) float64 breakpoints (distances, probabilities) of the isotonic fit
            of "the claim is true" against the support distance; see
            ``metrics.membership_probability``.
    """

    threshold: float
    f1: float
    per_class: dict[int, float]
    method: str
    claims: int
    probability: np.ndarray
    true_accepted: float | None = None
    unlike_rejected: float | None = None
    min_recall: float | None = None


def calibrate(
    stored: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    sample: int = CALIBRATION_SAMPLE,
    target_precision: float | None = None,
    partition: ClassPartition | None = None,
    support: int = DEFAULT_SUPPORT,
    unlike: np.ndarray | None = None,
    min_recall: float | None = None,
    rule: str = DISTANCE_RULE,
) -> Calibration:
    """Calibrate the membership threshold by leave-one-out over the stored set.

    A sample of stored rows is each claimed with its true and a random wrong class; a claim's
    distance is to the nearest stored member of the class other than the row itself. The
    threshold maximises F1 (or is the largest reaching ``target_precision``), globally and per
    claimed class.

    Args:
        unlike: vectors of images that belong to no class (non-digits); each is claimed as a
            random class, a false claim, so the threshold weighs rejecting them too.
        min_recall: never accept fewer than this share of the true claims by distance: where
            the rule above would, the threshold is raised to the smallest that does.
        rule: "distance" (a claim holds when its support distance is within the threshold) or
            "nearest-class" (and no other class has ``support`` members nearer): the rule the
            index answers by. The threshold is chosen on support distances under either rule
            (the vote only refuses more); F1, the shares accepted and rejected, and the
            probability are the rule's.

    Returns:
        The global and per-class thresholds, with how they were found.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}; got {rule!r}")
    partition = partition or ClassPartition(stored, labels)
    rows = np.sort(rng.choice(len(labels), size=min(sample, len(labels)), replace=False))
    claims = true_and_false_claims(np.asarray(labels)[rows], rng)
    claims = Claims(rows[claims.rows], claims.classes, claims.is_member)
    queries = stored[claims.rows]

    def judged(
        queries: np.ndarray, classes: np.ndarray, exclude: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Support distances, and where the rule refuses the claim whatever the threshold."""
        _, _, found = partition.nearest(queries, classes, exclude_rows=exclude, support=support)
        refused = np.zeros(len(found), bool)
        if rule == NEAREST_CLASS_RULE:
            nearer = partition.nearer_class(queries, classes, found, support, exclude_rows=exclude)
            refused = nearer >= 0
        return found, refused

    plain, refused = judged(queries, claims.classes, claims.rows)
    classes, truth = claims.classes, claims.is_member
    is_unlike = np.zeros(len(truth), bool)
    if unlike is not None and len(unlike):
        known = np.unique(labels)
        claimed = known[rng.integers(0, len(known), len(unlike))]
        more_plain, more_refused = judged(unlike, claimed, None)
        plain = np.concatenate([plain, more_plain])
        refused = np.concatenate([refused, more_refused])
        classes = np.concatenate([classes, claimed])
        truth = np.concatenate([truth, np.zeros(len(unlike), bool)])
        is_unlike = np.concatenate([is_unlike, np.ones(len(unlike), bool)])
    # A claim no threshold accepts stays in as "rejected" (a true one is a miss), at a distance
    # beyond every finite one; thresholds never go past the farthest finite distance.
    reachable = np.isfinite(plain)
    if not reachable.any():
        raise ValueError("no calibration claim has a finite distance; store more images")
    farthest = float(plain[reachable].max())
    beyond = 2 * farthest + 1
    plain = np.where(reachable, plain, beyond)
    # The threshold is the distance rule's, chosen on support distances alone: the nearest-class
    # vote only refuses more. Fitted to the vote, max F1 widened the threshold (the vote already
    # refuses most wrong-class claims), and the wider threshold let non-digits claimed as their
    # nearest class through. Figures and the probability are the rule's: refused claims beyond.
    distances = np.where(refused, beyond, plain)

    def pick(d: np.ndarray, t: np.ndarray, floor: float | None) -> float:
        """The precision target's threshold where it is reachable, else max F1 (then the floor),
        at most the farthest finite distance of these claims."""
        within = d <= farthest  # the claims some threshold can accept
        limit = float(d[within].max()) if within.any() else farthest
        if target_precision is not None:
            found = metrics.precision_at_target(d, t, target_precision)
            if found is not None:
                return min(found, limit)
        found = metrics.max_f1_threshold(d, t)[0]
        if floor is not None and (t & within).any():
            found = max(found, smallest_for_recall(d[within], t[within], floor))
        return min(found, limit)

    smallest_for_recall = metrics.smallest_threshold_for_recall
    reached = target_precision is not None and (
        metrics.precision_at_target(plain, truth, target_precision) is not None
    )
    # A precision target met replaces the recall floor: raising the threshold would undo it.
    floor = None if reached else min_recall
    threshold = pick(plain, truth, floor)
    per_class = {
        int(c): pick(plain[classes == c], truth[classes == c], floor)
        for c in np.unique(classes)
        if truth[classes == c].any() and (~truth[classes == c]).any()
    }
    how = f"largest threshold with precision >= {target_precision}" if reached else "max F1"
    if target_precision is not None and not reached:
        best = metrics.classification_summary(plain <= threshold, truth)["precision"]
        logger.warning(
            "Precision %s is not reached on any threshold of the %d calibration claims; "
            "calibrated by max F1 instead (precision %.4f). Ask for a lower --target-precision.",
            target_precision,
            len(distances),
            best,
        )
        how += f" (precision >= {target_precision} not reachable)"
    if unlike is not None and len(unlike):
        how += f", {len(unlike)} non-digits claimed as a random class among the false claims"
    if floor is not None:
        how += f", accepting at least {floor} of true claims"
        how += " by distance" if rule == NEAREST_CLASS_RULE else ""
    nearer = ""
    if rule == NEAREST_CLASS_RULE:
        nearer = f" (threshold), and no other class with {support} members nearer (vote)"
    accepted = distances <= threshold  # the rule check applies unless asked for per-class
    return Calibration(
        threshold=threshold,
        f1=float(metrics.classification_summary(distances <= threshold, truth)["f1"]),
        per_class=per_class,
        method=f"leave-one-out over {len(rows)} stored rows, true and wrong class each; "
        f"distance to the {_ordinal(support)} nearest member{nearer}; {how}",
        claims=int(len(distances)),
        probability=fit_probability(distances, truth),
        true_accepted=float(np.mean(accepted[truth])),
        unlike_rejected=float(np.mean(~accepted[is_unlike])) if is_unlike.any() else None,
        min_recall=floor,
    )


def fit_probability(distances: np.ndarray, is_member: np.ndarray) -> np.ndarray:
    """Isotonic regression (scikit-learn) of claim truth on support distance, the probability
    falling as the distance grows: its (2, m) breakpoints (distances, probabilities)."""
    from sklearn.isotonic import IsotonicRegression

    fit = IsotonicRegression(increasing=False, y_min=0.0, y_max=1.0, out_of_bounds="clip")
    fit.fit(np.asarray(distances, np.float64), np.asarray(is_member, np.float64))
    return np.stack([fit.X_thresholds_, fit.y_thresholds_]).astype(np.float64)


def calibrate_class(
    stored: np.ndarray,
    labels: np.ndarray,
    label: int,
    rng: np.random.Generator,
    support: int = DEFAULT_SUPPORT,
    sample: int = CALIBRATION_SAMPLE // 10,
) -> float | None:
    """One class's own threshold, at max F1: its members each claimed as it (leave-one-out)
    against stored images of every other class claimed as it. Each other class weighs the same
    (a wrong claim is as likely to come from a small class as from a large one), and all of
    them together as much as the true claims. None when the class has fewer than
    ``LATE_CLASS_MIN_MEMBERS`` members or no other class is stored.
    """
    labels = np.asarray(labels)
    members = np.flatnonzero(labels == label)
    others = [np.flatnonzero(labels == c) for c in np.unique(labels) if c != label]
    if len(members) < LATE_CLASS_MIN_MEMBERS or not others:
        return None
    members = np.sort(rng.choice(members, size=min(sample, len(members)), replace=False))
    each = max(1, sample // len(others))
    drawn = [np.sort(rng.choice(rows, size=min(each, len(rows)), replace=False)) for rows in others]
    wrong = np.concatenate(drawn)
    partition = ClassPartition(stored, labels)
    claimed = np.full(len(members), label)
    true_side = partition.nearest(stored[members], claimed, exclude_rows=members, support=support)
    false_side = partition.nearest(stored[wrong], np.full(len(wrong), label), support=support)
    distances = np.concatenate([true_side[2], false_side[2]])
    truth = np.concatenate([np.ones(len(members), bool), np.zeros(len(wrong), bool)])
    per_class = [np.full(len(rows), len(members) / (len(drawn) * len(rows))) for rows in drawn]
    weights = np.concatenate([np.ones(len(members)), *per_class])
    return metrics.max_f1_threshold(distances, truth, weights)[0]


def _ordinal(n: int) -> str:
    return {1: "1st", 2: "2nd", 3: "3rd"}.get(n, f"{n}th")


def calibrate_pairs(
    stored: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    sample: int = CALIBRATION_SAMPLE,
) -> tuple[float, float]:
    """The pair threshold ("same" when distance < it) with the best accuracy on article-protocol
    pairs of a sample of stored rows, an image never paired with itself.

    Returns:
        (threshold, accuracy at it).
    """
    rows = np.sort(rng.choice(len(labels), size=min(sample, len(labels)), replace=False))
    pairs = make_pairs(
        np.asarray(labels)[rows], "article", rng, same_fraction=ARTICLE_EVAL_SAME_FRACTION
    )
    distinct = pairs.left != pairs.right
    distances = pair_distances(stored[rows], pairs.left[distinct], pairs.right[distinct])
    return metrics.max_accuracy_threshold(distances, pairs.is_same[distinct])


def membership_metrics(
    partition: ClassPartition,
    queries: np.ndarray,
    labels: np.ndarray,
    threshold: float,
    rng: np.random.Generator,
    support: int = DEFAULT_SUPPORT,
) -> dict[str, object]:
    """Membership accuracy/F1 of true-and-wrong-class claims of every query at ``threshold``."""
    claims = true_and_false_claims(labels, rng)
    _, _, distances = partition.nearest(queries[claims.rows], claims.classes, support=support)
    predicted = distances <= threshold
    per_class = {
        int(c): metrics.classification_summary(
            predicted[claims.classes == c], claims.is_member[claims.classes == c]
        )["f1"]
        for c in np.unique(claims.classes)
    }
    return {
        **metrics.classification_summary(predicted, claims.is_member),
        "claims": int(len(claims.rows)),
        "per_class_f1": per_class,
    }


def retrieval_metrics(
    stored: np.ndarray, stored_labels: np.ndarray, queries: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """1-NN accuracy, precision@1 and MAP@R of ``queries`` against ``stored``.

    For single-label data 1-NN accuracy and precision@1 coincide; both are reported because
    they are asked for under both names.
    """
    counts = np.bincount(np.asarray(stored_labels))
    r = counts[np.asarray(labels)]
    k = int(r.max())
    total_ap, nearest = 0.0, np.empty(len(labels), dtype=np.int64)
    step = 500  # (500, R) neighbour lists keep memory near 50 MB on MNIST
    index = flat_index(stored)  # built once, searched a chunk at a time
    for start in range(0, len(labels), step):
        end = min(start + step, len(labels))
        _, rows = exact_search(index, queries[start:end], k, batch_size=step)
        neighbour_labels = np.asarray(stored_labels)[rows]
        nearest[start:end] = neighbour_labels[:, 0]
        total_ap += metrics.map_at_r(neighbour_labels, labels[start:end], r[start:end]) * (
            end - start
        )
    one_nn = float(np.mean(nearest == labels))
    return {"one_nn_accuracy": one_nn, "precision_at_1": one_nn, "map_at_r": total_ap / len(labels)}


def evaluate_vectors(
    stored: np.ndarray,
    stored_labels: np.ndarray,
    queries: np.ndarray,
    labels: np.ndarray,
    seed: int,
    pair_threshold: float | None = ARTICLE_THRESHOLD,
) -> dict[str, object]:
    """All held-out measures of one representation (embeddings or raw pixels).

    Args:
        stored: (m, d) float32 vectors of the train split.
        stored_labels: (m,) their labels.
        queries: (n, d) float32 vectors of the test split.
        labels: (n,) their labels.
        seed: drives pair and claim sampling.
        pair_threshold: threshold for pair accuracy (None: not meaningful, e.g. raw pixels).
    """
    rng = np.random.default_rng(seed)
    partition = ClassPartition(stored, stored_labels)
    calibration = calibrate(stored, stored_labels, rng, partition=partition)
    threshold = calibration.threshold
    pairs = pair_metrics(queries, labels, np.random.default_rng(seed), pair_threshold)
    return {
        **pairs,
        **retrieval_metrics(stored, stored_labels, queries, labels),
        "threshold": threshold,
        "threshold_method": calibration.method,
        "membership": membership_metrics(partition, queries, labels, threshold, rng),
    }


def raw_pixels(images: np.ndarray) -> np.ndarray:
    """The raw-pixel baseline representation: (n, 784) float32 in 0..1."""
    return np.asarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0


def evaluate(
    embed: Callable[[np.ndarray], np.ndarray],
    data_dir: str | None = None,
    seed: int = 0,
    train_size: int | None = None,
    test_size: int | None = None,
) -> dict[str, object]:
    """Measure an encoder and the raw-pixel baseline on the test split against the train split.

    Args:
        embed: images (n, 28, 28) uint8 -> (n, embedding_dim) float32.
        data_dir: dataset folder, None for the bundled MNIST.
        seed: drives pair and claim sampling (the same for both representations).
        train_size, test_size: use only the first N images of each split.

    Returns:
        {"encoder": {...}, "raw_pixels": {...}, "sizes": {...}} with the measures of
        ``evaluate_vectors`` for each.
    """
    train = load_dataset(data_dir, "train")
    test = load_dataset(data_dir, "test")
    if train_size:
        train = train.subset(slice(0, train_size))
    if test_size:
        test = test.subset(slice(0, test_size))
    results: dict[str, object] = {"sizes": {"stored": len(train), "queries": len(test)}}
    for name, represent, threshold in (
        ("encoder", embed, ARTICLE_THRESHOLD),
        ("raw_pixels", raw_pixels, None),
    ):
        results[name] = evaluate_vectors(
            represent(train.images),
            train.labels,
            represent(test.images),
            test.labels,
            seed,
            threshold,
        )
    return results
