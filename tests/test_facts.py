"""IndexFacts: one place that reads, defaults and writes an index's scalar facts."""

from __future__ import annotations

import pytest

from siamindex.facts import IndexFacts


def test_round_trip_through_attributes():
    import json

    facts = IndexFacts(
        embedding_dim=64,
        threshold=0.4,
        support=3,
        splits=("train", "test"),
        versions={"faiss": "1.15"},
        target_precision=None,
        next_id=70_000,
        late_classes=("cat", "dog"),
    )
    attrs = facts.to_attrs()
    assert "target_precision" not in attrs  # None is left out (HDF5 has no null)
    assert json.loads(attrs["splits"]) == ["train", "test"]
    listed = ("splits", "versions", "late_classes")
    decoded = {k: json.loads(v) if k in listed else v for k, v in attrs.items()}
    assert IndexFacts.from_attrs(decoded) == facts


def test_defaults_for_bundles_written_before_facts_were_recorded():
    # The attributes of an early bundle: no support, no pair threshold, the distance as "l2".
    facts = IndexFacts.from_attrs(
        {
            "embedding_dim": 64,
            "threshold": 0.3,
            "metric": "l2",
            "target_precision": -1.0,
            "count": 9,
        }
    )
    assert facts.support == 1  # then the nearest member alone decided
    assert facts.pair_threshold == 0.5  # then compare used the article's threshold
    assert facts.distance == "euclidean" and facts.target_precision is None
    assert facts.index_type == "flat" and facts.source == "mnist"


def test_the_one_distance_fact_wins_over_its_old_copies():
    facts = IndexFacts.from_attrs(
        {"embedding_dim": 8, "threshold": 1.0, "distance": "euclidean", "metric": "l2"}
    )
    assert facts.distance == "euclidean"


def test_missing_essentials_are_an_error():
    with pytest.raises(KeyError):
        IndexFacts.from_attrs({"embedding_dim": 8})
