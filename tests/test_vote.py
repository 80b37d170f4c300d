"""The nearest-class rule's scales and reach (siamindex/vote.py); the vote itself is tested
against NumPy in test_search.py and through check and query in test_curation.py."""

from __future__ import annotations

import numpy as np
import pytest

from siamindex.index import Index
from siamindex.vote import rival_reach, vote_scales, vote_width


def test_scales_are_the_global_threshold_but_for_late_classes_wider_than_it(fake_index, mnist_test):
    store = fake_index.store
    assert vote_scales(store) is None  # the build's classes alone: the plain vote
    assert vote_width(store) == 21  # and the one-search path
    rows = np.flatnonzero(mnist_test.labels == 7)[-30:]
    fake_index.add(mnist_test.images[rows[:4]], "seven-b", new_class=True)
    assert vote_scales(fake_index.store) is None  # too few members for a threshold of its own
    fake_index.add(mnist_test.images[rows[4:]], "seven-b")
    store = fake_index.store
    late = store.class_names.index("seven-b")
    assert np.isfinite(store.class_thresholds[late])
    # Whichever side of the global threshold its own one fell, both cases (set here):
    store.class_thresholds[late] = 0.8 * store.facts.threshold  # narrower: no sparse class
    assert vote_scales(store) is None and vote_width(store) == 23  # 11 classes
    store.class_thresholds[late] = 1.5 * store.facts.threshold  # wider: weighed in it
    scales = vote_scales(store)
    assert scales is not None and vote_width(store) == 0  # the per-class path weighs scales
    assert scales[late] == pytest.approx(1.5 * store.facts.threshold)
    others = np.delete(scales, late)
    np.testing.assert_array_equal(others, np.full(len(others), store.facts.threshold))


def test_rival_reach_is_the_threshold_or_where_the_probability_stops_falling(fake_bundle):
    store = Index.open(fake_bundle, embed=lambda x: x).store
    distances, chances = store.probability
    flat = distances[np.flatnonzero(chances == chances[-1])[0]]
    reach = rival_reach(store, np.array([0.0, store.facts.threshold, 10.0 * flat]))
    np.testing.assert_allclose(reach, [flat, max(flat, store.facts.threshold), 10.0 * flat])
