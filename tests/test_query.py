"""Result types and the vector-level answers: nearest, membership, summary, compare, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from siamindex.query import (
    Match,
    MembershipResult,
    QueryResult,
    check_membership,
    compare,
    membership_summary,
    nearest,
    to_json,
)


def _claim(class_name: str, is_member: bool, true_class: str | None) -> MembershipResult:
    return MembershipResult("q", class_name, is_member, 0.1, 0.5, "global", 0, 0.2, 3, true_class)


def test_json_uses_the_one_word_class():
    match = Match(query="a.png", rank=1, id=7, class_name="3", split="train", distance=0.25)
    result = QueryResult("a.png", "3", 0.25, 0.5, [match])
    out = to_json(result)
    assert out["matches"][0] == {
        "query": "a.png",
        "rank": 1,
        "id": 7,
        "class": "3",
        "split": "train",
        "distance": 0.25,
    }
    claim = to_json([_claim("7", True, "7")])[0]
    assert claim["class"] == "7" and claim["true_class"] == "7" and "class_name" not in claim
    json.dumps(out)


def test_membership_summary_counts_and_per_class():
    results = [
        _claim("7", True, "7"),  # true positive
        _claim("7", True, "1"),  # false positive
        _claim("1", False, "1"),  # false negative
        _claim("1", False, "7"),  # true negative
        _claim("1", True, None),  # truth unknown: left out
    ]
    summary = membership_summary(results)
    assert summary is not None and summary["claims"] == 4
    counts = ("true_positive", "false_positive", "false_negative", "true_negative")
    assert tuple(summary[c] for c in counts) == (1, 1, 1, 1)
    assert set(summary["per_class"]) == {"1", "7"}
    assert summary["per_class"]["7"]["precision"] == pytest.approx(0.5)
    assert membership_summary([_claim("1", True, None)]) is None


def test_compare_is_euclidean_and_strict():
    result = compare(np.array([0.0, 0.0]), np.array([3.0, 4.0]), ("a", "b"), threshold=5.0)
    assert result.distance == pytest.approx(5.0) and result.same is False


def test_nearest_and_check_on_stored_vectors(fake_index):
    store, partition = fake_index.store, fake_index.partition
    vectors = store.rows.embeddings[:4]
    results = nearest(store, partition, vectors, ["a", "b", "c", "d"], k=2)
    assert [r.matches[0].id for r in results] == list(store.rows.ids[:4])  # each finds itself
    claimed = store.rows.labels[:4]
    checked = check_membership(store, partition, vectors, list("abcd"), claimed)
    for claim, result in zip(checked, results, strict=True):
        assert claim.distance == pytest.approx(0.0, abs=1e-5)
        assert result.predicted == (claim.class_name if claim.is_member else None)


def test_one_exact_search_answers_a_query_as_the_per_class_searches_do(fake_index, mnist_train):
    """Flat indexes under the nearest-class rule answer a query from one search of the 21
    nearest stored images (10 classes x 2 + 1): the matches, and the class that reaches 3
    members first. The per-class searches (the path of approximate index types) agree."""
    from dataclasses import replace

    from siamindex.vote import rival_reach, vote_width

    store, partition = fake_index.store, fake_index.partition
    queries = fake_index.embed(mnist_train.images[-400:])  # not stored
    names = [str(i) for i in range(len(queries))]
    assert vote_width(store) == 21
    one = nearest(store, partition, queries, names, k=3)
    per_class = replace(store, facts=replace(store.facts, index_type="IDMap2,Flat"))
    assert vote_width(per_class) == 0
    many = nearest(per_class, partition, queries, names, k=3)
    moved = 0
    for fast, slow in zip(one, many, strict=True):
        assert [m.id for m in fast.matches] == [m.id for m in slow.matches]
        moved += fast.predicted is not None and fast.predicted != fast.matches[0].class_name
        if fast.predicted != slow.predicted:
            # The per-class path looks for a nearer class only within reach of the nearest
            # match's class; beyond it, that class fails and the query gets no match, where
            # the vote finds the class the rule accepts.
            assert slow.predicted is None and fast.predicted is not None
            first = store.class_names.index(fast.matches[0].class_name)
            _, _, kth = partition.nearest(queries[[int(fast.query)]], np.array([first]), support=3)
            assert kth[0] > rival_reach(store, store.facts.threshold)
        else:
            assert fast.probability == pytest.approx(slow.probability, abs=1e-6)
    assert moved > 0  # the vote chose another class than the nearest match's, and held
