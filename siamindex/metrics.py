"""Accuracy measures on distances and neighbour lists (NumPy + scikit-learn, no TensorFlow)."""

from __future__ import annotations

import numpy as np


def pair_accuracy(distances: np.ndarray, is_same: np.ndarray, threshold: float) -> float:
    """Share of pairs called right when "same" means distance < threshold (the article's rule)."""
    return float(np.mean((np.asarray(distances) < threshold) == (np.asarray(is_same) == 1)))


def max_accuracy_threshold(distances: np.ndarray, is_same: np.ndarray) -> tuple[float, float]:
    """The threshold t with the highest pair accuracy when "same" means distance < t.

    Candidates are the midpoints between consecutive sorted distances (and the two ends).

    Returns:
        (threshold, accuracy at it).
    """
    order = np.argsort(distances, kind="stable")
    d = np.asarray(distances, dtype=np.float64)[order]
    same = (np.asarray(is_same) == 1)[order]
    # Calling the first i pairs "same": correct = same among them + different among the rest.
    correct = np.concatenate([[0], np.cumsum(same)]) + np.concatenate(
        [np.cumsum((~same)[::-1])[::-1], [0]]
    )
    best = int(np.argmax(correct))
    if best == 0:
        threshold = d[0] / 2
    elif best == len(d):
        threshold = d[-1] + 1.0
    else:
        threshold = (d[best - 1] + d[best]) / 2
    return float(threshold), float(correct[best] / len(d))


def roc_auc(distances: np.ndarray, is_same: np.ndarray) -> float:
    """ROC AUC of "same" scored by negative distance."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(is_same) == 1, -np.asarray(distances, dtype=np.float64)))


def max_f1_threshold(
    distances: np.ndarray, is_member: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, float]:
    """The distance threshold with the highest F1 when "member" means distance <= threshold.

    The threshold returned lies halfway between the last distance accepted and the next one
    rejected, so that it does not sit on a training point. ``weights`` (one per claim) count
    some claims more than others, e.g. to weigh few true claims as much as many false ones.

    Returns:
        (threshold, f1 at that threshold).
    """
    from sklearn.metrics import precision_recall_curve

    distances = np.asarray(distances, dtype=np.float64)
    precision, recall, thresholds = precision_recall_curve(
        np.asarray(is_member) == 1, -distances, sample_weight=weights
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1[:-1]))
    accepted = -thresholds[best]
    above = distances[distances > accepted]
    threshold = (accepted + above.min()) / 2 if above.size else accepted
    return float(threshold), float(f1[best])


def precision_at_target(
    distances: np.ndarray, is_member: np.ndarray, target: float
) -> float | None:
    """The largest distance threshold whose precision is at least ``target``, or None.

    Sweeping the threshold down from "accept everything", this is the first one that reaches the
    target: of those that do, it accepts the most claims (highest recall).
    """
    from sklearn.metrics import precision_recall_curve

    scores = -np.asarray(distances, dtype=np.float64)
    precision, _, thresholds = precision_recall_curve(np.asarray(is_member) == 1, scores)
    ok = np.flatnonzero(precision[:-1] >= target)
    if ok.size == 0:
        return None
    return float(-thresholds[ok[0]])


def smallest_threshold_for_recall(
    distances: np.ndarray, is_member: np.ndarray, recall: float
) -> float:
    """The smallest distance threshold that accepts at least ``recall`` of the members: the
    ``recall`` quantile of the members' distances (member if distance <= threshold)."""
    members = np.sort(np.asarray(distances, np.float64)[np.asarray(is_member, bool)])
    if not members.size:
        raise ValueError("no member claims to take a recall from")
    return float(members[min(len(members) - 1, int(np.ceil(recall * len(members))) - 1)])


def classification_summary(predicted: np.ndarray, actual: np.ndarray) -> dict[str, float | int]:
    """Accuracy, precision, recall and F1 of boolean predictions, with the confusion counts."""
    predicted = np.asarray(predicted, dtype=bool)
    actual = np.asarray(actual, dtype=bool)
    tp = int(np.sum(predicted & actual))
    fp = int(np.sum(predicted & ~actual))
    fn = int(np.sum(~predicted & actual))
    tn = int(np.sum(~predicted & ~actual))
    return summary_of_counts(tp, fp, fn, tn)


def summary_of_counts(tp: int, fp: int, fn: int, tn: int) -> dict[str, float | int]:
    """``classification_summary`` from the four confusion counts."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    total = tp + fp + fn + tn
    return {
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positive": tp,
        "false_positive": fp,
        "false_negative": fn,
        "true_negative": tn,
    }


def map_at_r(neighbour_labels: np.ndarray, query_labels: np.ndarray, r: np.ndarray) -> float:
    """Mean average precision at R (Musgrave et al., "A Metric Learning Reality Check").

    For each query, R is the number of stored items of its class; with P(i) the precision over
    the first i neighbours, MAP@R averages sum_{i<=R, i-th relevant} P(i) / R over queries.

    Args:
        neighbour_labels: (n, k) labels of each query's neighbours, nearest first, k >= max(r).
        query_labels: (n,) labels of the queries.
        r: (n,) R for each query.
    """
    relevant = neighbour_labels == np.asarray(query_labels)[:, None]
    ranks = np.arange(1, relevant.shape[1] + 1)
    within = ranks[None, :] <= np.asarray(r)[:, None]
    relevant &= within
    precision = np.cumsum(relevant, axis=1) / ranks[None, :]
    return float(np.mean(np.sum(precision * relevant, axis=1) / np.asarray(r)))


def membership_probability(distances: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """The calibrated probability that claims at these support distances are true: (n,) float.

    Isotonic regression predicts by linear interpolation between its breakpoints, constant
    beyond the ends, which is what ``np.interp`` does, so no fitted model needs storing.
    """
    return np.asarray(np.interp(np.asarray(distances, np.float64), curve[0], curve[1]))


def calibration_error(probabilities: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: over equal-width bins of the predicted probability, the
    gap between the mean probability and the share of true outcomes, weighted by bin size."""
    probabilities = np.asarray(probabilities, np.float64)
    truth = np.asarray(truth, np.float64)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    return float(
        sum(
            abs(probabilities[which == b].mean() - truth[which == b].mean()) * np.mean(which == b)
            for b in np.unique(which)
        )
    )
