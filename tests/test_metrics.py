"""Metrics and search against brute-force references on tiny seeded data."""

from __future__ import annotations

import numpy as np
import pytest

from siamindex import metrics
from siamindex.evaluation import calibrate, retrieval_metrics, true_and_false_claims
from siamindex.search import ClassPartition, exact_search


@pytest.fixture
def vectors():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 16)).astype(np.float32), rng.normal(size=(50, 16)).astype(
        np.float32
    )


def brute_force(base, queries, k):
    distances = np.linalg.norm(queries[:, None, :] - base[None, :, :], axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


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


def test_map_at_r_matches_a_loop(vectors):
    base, queries = vectors
    stored_labels = np.random.default_rng(4).integers(0, 3, size=len(base))
    labels = np.random.default_rng(5).integers(0, 3, size=len(queries))
    got = retrieval_metrics(base, stored_labels, queries, labels)
    _, order = brute_force(base, queries, len(base))
    total = 0.0
    for i in range(len(queries)):
        r = int(np.sum(stored_labels == labels[i]))
        hits, score = 0, 0.0
        for rank in range(r):
            if stored_labels[order[i, rank]] == labels[i]:
                hits += 1
                score += hits / (rank + 1)
        total += score / r
    assert got["map_at_r"] == pytest.approx(total / len(queries))
    assert got["one_nn_accuracy"] == pytest.approx(np.mean(stored_labels[order[:, 0]] == labels))


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


def test_claims_have_one_true_and_one_wrong_class():
    labels = np.random.default_rng(0).integers(0, 10, size=500)
    claims = true_and_false_claims(labels, np.random.default_rng(1))
    assert len(claims.rows) == 1000
    np.testing.assert_array_equal(claims.classes[:500], labels)
    assert np.all(claims.classes[500:] != labels)
    assert claims.is_member.sum() == 500


def test_calibration_separates_well_separated_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 8)) * 10
    vectors = (centres[labels] + rng.normal(size=(200, 8)) * 0.1).astype(np.float32)
    result = calibrate(vectors, labels, np.random.default_rng(1), sample=200)
    assert result.f1 == 1.0
    gaps = np.linalg.norm(centres[:, None] - centres[None, :], axis=2)
    # Same-class neighbours lie ~0.4 apart, other classes >= the smallest gap between centres.
    assert 0.3 < result.threshold < gaps[gaps > 0].min()
    assert set(result.per_class) == set(range(5))


def test_max_accuracy_threshold_matches_a_scan():
    rng = np.random.default_rng(0)
    distances = np.concatenate([rng.normal(0.4, 0.15, 300), rng.normal(1.0, 0.2, 500)])
    same = np.concatenate([np.ones(300), np.zeros(500)])
    threshold, accuracy = metrics.max_accuracy_threshold(distances, same)
    scan = max(metrics.pair_accuracy(distances, same, t) for t in np.linspace(0, 2, 4001))
    assert accuracy == pytest.approx(metrics.pair_accuracy(distances, same, threshold))
    assert accuracy >= scan - 1e-12
