"""Threshold and classification metrics against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from siamindex import metrics


def test_pair_accuracy_and_auc():
    distances = np.array([0.1, 0.4, 0.6, 0.9, 0.3])
    same = np.array([1, 1, 0, 0, 0])
    assert metrics.pair_accuracy(distances, same, 0.5) == pytest.approx(0.8)
    # Of the 6 (same, different) pairings, the same pair is nearer in 5: (0.4 vs 0.3) loses.
    assert metrics.roc_auc(distances, same) == pytest.approx(5 / 6)


def test_max_f1_threshold_is_between_points():
    distances = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.35])
    member = np.array([1, 1, 1, 0, 0, 1])
    threshold, f1 = metrics.max_f1_threshold(distances, member)
    assert f1 == 1.0
    assert threshold == pytest.approx((0.35 + 0.7) / 2)


def test_precision_target_threshold():
    distances = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    member = np.array([1, 1, 0, 1, 0, 0])
    # Accepting <= 0.4 gives precision 3/4; <= 0.2 gives 1.0.
    assert metrics.precision_at_target(distances, member, 0.75) == pytest.approx(0.4)
    assert metrics.precision_at_target(distances, member, 0.9) == pytest.approx(0.2)


def test_classification_summary_counts():
    summary = metrics.classification_summary(
        np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 0, 1, 1], bool)
    )
    assert (summary["true_positive"], summary["false_positive"]) == (2, 1)
    assert (summary["false_negative"], summary["true_negative"]) == (1, 1)
    assert summary["f1"] == pytest.approx(2 / 3)


def test_max_accuracy_threshold_matches_a_scan():
    rng = np.random.default_rng(0)
    distances = np.concatenate([rng.normal(0.4, 0.15, 300), rng.normal(1.0, 0.2, 500)])
    same = np.concatenate([np.ones(300), np.zeros(500)])
    threshold, accuracy = metrics.max_accuracy_threshold(distances, same)
    scan = max(metrics.pair_accuracy(distances, same, t) for t in np.linspace(0, 2, 4001))
    assert accuracy == pytest.approx(metrics.pair_accuracy(distances, same, threshold))
    assert accuracy >= scan - 1e-12


def test_calibration_error_by_hand():
    probabilities = np.array([0.05, 0.05, 0.95, 0.95, 0.55, 0.55])
    truth = np.array([0, 0, 1, 0, 1, 1])
    # bins: [0.0-0.1) gap 0.05 (2/6); [0.9-1.0] gap 0.45 (2/6); [0.5-0.6) gap 0.45 (2/6)
    assert metrics.calibration_error(probabilities, truth) == pytest.approx(
        (0.05 + 0.45 + 0.45) / 3
    )


def test_smallest_threshold_for_recall_is_the_members_quantile():
    from siamindex.metrics import smallest_threshold_for_recall

    distances = np.array([0.1, 0.2, 0.3, 0.4, 5.0, 0.05])
    truth = np.array([True, True, True, True, False, False])
    assert smallest_threshold_for_recall(distances, truth, 1.0) == 0.4
    assert smallest_threshold_for_recall(distances, truth, 0.75) == 0.3
    assert smallest_threshold_for_recall(distances, truth, 0.5) == 0.2
    accepted = distances[truth] <= smallest_threshold_for_recall(distances, truth, 0.6)
    assert accepted.mean() >= 0.6
    with pytest.raises(ValueError, match="no member"):
        smallest_threshold_for_recall(distances, np.zeros(6, bool), 0.5)
