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
