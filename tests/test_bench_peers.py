"""The peers benchmark, small: every adapter answers like exact search, and the workloads measure
what siamindex itself answers (tools/peers.py, tools/bench_peers.py)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import bench_peers  # noqa: E402
import peers  # noqa: E402

from siamindex.index import Index  # noqa: E402

# The peers' own deprecations (Chroma warns about its legacy configuration format while reading
# it back) are theirs to fix, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# The most thorough setting of each approximate peer: on 300 stored vectors it searches them all.
THOROUGH = {"siamindex IVF256": 256, "siamindex HNSW32": 300, "hnswlib": 300, "usearch": 300}


@pytest.fixture(scope="module")
def workload(tiny_bundle, mnist_train):
    """300 stored embeddings of MNIST test images (the tiny real encoder), 20 train images as
    queries (40 claims), and the exact answers."""
    index = Index.open(tiny_bundle)
    names = index.store.class_names
    labels = np.array([names.index(str(c)) for c in mnist_train.labels[:20]])
    return bench_peers.prepare(
        index.store.rows.embeddings,
        index.store.rows.labels,
        index.embed(mnist_train.images[:20]),
        labels,
        float(index.facts.threshold),
        int(index.facts.support),
    )


def agreement(workload, queries, found, truth_key):
    """The share of positions holding the exact answer, counting a tie (another stored vector
    exactly as far, which the tiny encoder makes now and then) as the exact answer."""
    stored, truth = workload["stored"], workload[truth_key]
    assert found.shape == truth.shape and np.all(found >= 0) and np.all(found < len(stored))
    distance = np.linalg.norm(stored[found] - queries[:, None], axis=2)
    want = np.linalg.norm(stored[truth] - queries[:, None], axis=2)
    assert np.mean(found == truth) > 0.9  # ties stay the exception
    return float(np.mean(np.isclose(distance, want, rtol=1e-5, atol=1e-6)))


@pytest.mark.parametrize("name", list(peers.PEERS))
def test_every_peer_answers_the_same_queries_as_exact_search(name, workload, tmp_path):
    """Exact peers give the exact answer everywhere (ties aside). Approximate ones at their most
    thorough setting find nearly all of it (recall, as the benchmark counts it): a graph
    (USearch, hnswlib) can leave a vector unreachable from the entry point even when it visits
    as many nodes as there are, and its build is threaded, so the misses seen in CI (1, 7 and
    then 2 true neighbours in 100) are the graph's, not the adapter's: an adapter that mixed up
    ids or classes would find almost none. (Counted by position, as for exact peers, one missed
    nearest neighbour shifts the whole row: CI once saw 10 positions in 100 off that way.)"""
    setting = THOROUGH.get(name, bench_peers.SETTINGS.get(name, [None])[-1])
    peers.PEERS[name](setting).build(tmp_path / "store", workload["stored"], workload["labels"])
    peer = peers.PEERS[name](setting)
    peer.open(tmp_path / "store")

    def answers(queries, found, truth_key):
        assert found.shape == workload[truth_key].shape
        if peer.exact:
            return agreement(workload, queries, found, truth_key) == 1.0
        return bench_peers.recall(found, workload[truth_key]) >= 0.9

    try:
        queries, claims = workload["queries"], workload["claim_queries"]
        assert answers(queries, peer.batch(queries, bench_peers.K), "batch_truth")
        singles = np.stack([peer.single(q, bench_peers.K) for q in queries])
        assert answers(queries, singles, "batch_truth")
        members = peer.members(claims, workload["claim_classes"], bench_peers.MEMBERS)
        assert answers(claims, members, "member_truth")
    finally:
        peer.close()
    assert peers.folder_bytes(tmp_path / "store") > 0


def test_exact_references_agree_with_siamindex_search(workload):
    from siamindex.search import ClassPartition, exact_search

    _, rows = exact_search(workload["stored"], workload["queries"], bench_peers.K)
    np.testing.assert_array_equal(rows, workload["batch_truth"])
    partition = ClassPartition(workload["stored"], workload["labels"])
    _, members = partition.search(
        workload["claim_queries"], workload["claim_classes"], bench_peers.MEMBERS
    )
    np.testing.assert_array_equal(members, workload["member_truth"])
    # Claims in random order: both kinds early on, so a prefix is a fair sample.
    assert set(workload["is_member"][:10]) == {True, False}


def test_the_small_benchmark_measures_what_siamindex_answers(workload, tiny_bundle, tmp_path):
    args = argparse.Namespace(repeats=1, build_repeats=1, singles=20, budget=30.0, recall=0.99)
    rows = [
        bench_peers.measure(name, tmp_path, workload, args)
        for name in ("siamindex", "siamindex HNSW32", "usearch exact", "hnswlib")
    ]
    ours, _, exact_peer, approximate = rows
    assert ours.batch_recall == 1.0 and ours.members_recall == 1.0
    assert exact_peer.batch_recall == 1.0 and exact_peer.members_f1 == ours.members_f1
    # Tuned to the target on the tuning prefix (here, all the queries).
    assert approximate.batch_recall >= 0.99 or approximate.notes
    # The F1 the benchmark computes is the F1 of siamindex's own verdicts on the same claims
    # under the distance rule: a class-filtered search, which every peer can do (the default
    # nearest-class rule also needs an unfiltered search; see the tool's docstring).
    index = Index.open(tiny_bundle)
    index.store.facts = dataclasses.replace(index.store.facts, rule="distance")
    verdicts = index.check_vectors(
        workload["claim_queries"],
        [index.store.class_names[c] for c in workload["claim_classes"]],
    )
    accepted = np.array([v.is_member for v in verdicts])
    truth = workload["is_member"]
    tp = np.sum(accepted & truth)
    f1 = 2 * tp / (np.sum(accepted) + np.sum(truth))
    assert ours.members_f1 == pytest.approx(f1)
    for row in rows:
        assert row.build_seconds > 0 and row.disk_mb > 0 and row.cold_open_seconds > 0
        assert 0 < row.single_p50_ms <= row.single_p99_ms
        assert row.batch_qps > 0 and row.members_qps > 0

    ratio = bench_peers.ratios(rows, 0.99)
    assert set(ratio) == {"usearch exact", "hnswlib"}
    assert all(np.isfinite(v) and v > 0 for r in ratio.values() for v in r.values())
    text = bench_peers.table(rows)
    assert all(row.peer in text for row in rows)
    bench_peers.figure(ratio, tmp_path / "peers.png")
    assert (tmp_path / "peers.png").stat().st_size > 0


def test_a_missing_peer_is_reported_with_the_reason():
    with pytest.raises(peers.PeerMissing, match="no_such_store"):
        peers._need("no_such_store")


def test_within_budget_samples_a_prefix_of_a_slow_workload():
    import time

    assert bench_peers.within_budget(lambda n: None, 10_000, budget=60) == 10_000
    count = bench_peers.within_budget(lambda n: time.sleep(n * 0.001), 100_000, budget=0.5)
    assert 10 <= count < 1_000
