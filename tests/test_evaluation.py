"""Held-out measures and calibration against hand-computed references."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import brute_force

from siamindex.evaluation import calibrate, retrieval_metrics, true_and_false_claims


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


def test_probability_fit_is_calibrated_and_falls_with_distance():
    from siamindex.evaluation import fit_probability
    from siamindex.metrics import membership_probability

    rng = np.random.default_rng(0)
    distances = rng.uniform(0, 1, 20_000)
    truth = rng.random(20_000) < 1 / (1 + np.exp((distances - 0.5) * 12))  # known P(true | d)
    curve = fit_probability(distances, truth)
    assert curve.shape[0] == 2 and np.all(np.diff(curve[1]) <= 0) and np.all(np.diff(curve[0]) >= 0)
    grid = np.linspace(0.05, 0.95, 19)
    want = 1 / (1 + np.exp((grid - 0.5) * 12))
    assert np.max(np.abs(membership_probability(grid, curve) - want)) < 0.08
    # Beyond the fitted range it is constant (isotonic regression's "clip").
    ends = membership_probability(np.array([-5.0, 50.0]), curve)
    np.testing.assert_allclose(ends, [curve[1, 0], curve[1, -1]])


def test_calibration_carries_the_probability_curve():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 40)
    vectors = (rng.normal(size=(5, 8))[labels] * 3 + rng.normal(size=(200, 8))).astype(np.float32)
    result = calibrate(vectors, labels, np.random.default_rng(1), sample=200)
    assert result.probability.shape[0] == 2 and result.probability[1].max() <= 1.0


def _clusters(seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(4), 100)
    centres = rng.normal(size=(4, 8)) * 6
    vectors = (centres[labels] + rng.normal(size=(400, 8)) * spread).astype(np.float32)
    return vectors, labels, centres


def _near(centres, seed=5):
    """ "Non-digits" just outside each cluster: no wrong-class claim comes that close."""
    rng = np.random.default_rng(seed)
    return (centres[rng.integers(0, 4, 300)] + rng.normal(size=(300, 8)) * 1.6).astype(np.float32)


def test_non_digits_among_the_false_claims_tighten_the_threshold():
    vectors, labels, centres = _clusters()
    unlike = _near(centres)
    plain = calibrate(vectors, labels, np.random.default_rng(1), sample=400)
    with_unlike = calibrate(vectors, labels, np.random.default_rng(1), sample=400, unlike=unlike)
    assert plain.unlike_rejected is None
    assert with_unlike.threshold < plain.threshold
    assert "300 non-digits" in with_unlike.method
    assert with_unlike.unlike_rejected > 0.5
    assert with_unlike.true_accepted < plain.true_accepted


def test_min_recall_raises_the_threshold_to_accept_that_share():
    vectors, labels, centres = _clusters()
    unlike = _near(centres)
    strict = calibrate(vectors, labels, np.random.default_rng(1), sample=400, unlike=unlike)
    floor = calibrate(
        vectors, labels, np.random.default_rng(1), sample=400, unlike=unlike, min_recall=0.999
    )
    assert strict.true_accepted < 0.999 <= floor.true_accepted
    assert floor.threshold >= strict.threshold
    assert "at least 0.999 of true claims" in floor.method


def test_target_precision_reached_is_the_largest_such_threshold_without_a_floor():
    vectors, labels, _ = _clusters(spread=4.0)  # overlapping: max F1 is not precise
    plain = calibrate(vectors, labels, np.random.default_rng(1), sample=400, min_recall=0.99)
    precise = calibrate(
        vectors,
        labels,
        np.random.default_rng(1),
        sample=400,
        target_precision=0.99,
        min_recall=0.99,  # replaced by the precision target: it would undo it
    )
    assert precise.threshold < plain.threshold
    assert precise.method.endswith("largest threshold with precision >= 0.99")
    assert precise.min_recall is None and plain.min_recall == 0.99
    higher = calibrate(vectors, labels, np.random.default_rng(1), sample=400, target_precision=1.0)
    assert higher.threshold <= precise.threshold


def test_target_precision_not_reached_warns_and_records_max_f1(caplog):
    vectors, labels, _ = _clusters()
    # Copies of stored vectors claimed as random classes: false claims at distance 0 (support
    # 1), nearer than any true claim, so no threshold is fully precise.
    unlike = vectors[:100]
    common = dict(sample=400, support=1, unlike=unlike, min_recall=0.95)
    plain = calibrate(vectors, labels, np.random.default_rng(1), **common)
    with caplog.at_level("WARNING", logger="siamindex.evaluation"):
        result = calibrate(
            vectors, labels, np.random.default_rng(1), target_precision=1.0, **common
        )
    assert result.threshold == plain.threshold and result.min_recall == 0.95
    assert "max F1 (precision >= 1.0 not reachable)" in result.method
    assert "at least 0.95 of true claims" in result.method
    (record,) = caplog.records
    assert "Precision 1.0 is not reached" in record.getMessage()
    assert "\n" not in record.getMessage()


def _tight_inside_wide(seed=0):
    """Class 0 tight around the origin, class 1 a wide cloud around it too, class 2 far off:
    the 1s nearest any 0 are as near as 1s are to each other."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([0, 1, 2], 200)
    vectors = rng.normal(size=(600, 8)) * np.array([0.3, 1.5, 0.3])[labels, None]
    vectors[labels == 2] += 20
    return vectors.astype(np.float32), labels


def test_the_nearest_class_rule_rejects_claims_that_another_class_is_nearer_to():
    from siamindex.search import ClassPartition

    vectors, labels = _tight_inside_wide()
    by_distance = calibrate(vectors, labels, np.random.default_rng(1), sample=600)
    nearest = calibrate(vectors, labels, np.random.default_rng(1), sample=600, rule="nearest-class")
    # By distance, "this 0 is a 1" has to be accepted to accept the 1s themselves; the vote
    # refuses it at the same threshold, chosen on distances alone (the vote only refuses more).
    assert nearest.threshold == by_distance.threshold
    assert nearest.per_class == by_distance.per_class
    assert by_distance.f1 < 0.9 and nearest.f1 > by_distance.f1 + 0.05
    assert "no other class with 3 members nearer (vote)" in nearest.method
    # Its figures are the rule's: true claims another class is nearer to are refused.
    partition = ClassPartition(vectors, labels)
    rows = np.arange(600)
    _, _, kth = partition.nearest(vectors, labels, exclude_rows=rows, support=3)
    nearer = partition.nearer_class(vectors, labels, kth, support=3, exclude_rows=rows)
    winners = nearer < 0
    assert 0.5 < winners.mean() < 1.0
    assert nearest.true_accepted < by_distance.true_accepted
    assert nearest.true_accepted <= winners.mean() + 0.01
