"""siamindex beside the vector stores a user would pick instead, on the same embeddings.

The stored vectors are a siamindex index's own (``--index``, e.g. ``mnist-train``: the default
encoder's 64-d embeddings of MNIST's 60,000 train images, with the class); the queries are the
10,000 test images embedded by the same encoder. Every peer (tools/peers.py) stores the same
vectors with the class as metadata, in its own persistent form, and is asked the same questions,
in one run, on one machine:

* build: insert everything and build the index, written to disk (median of --build-repeats);
  size on disk; cold open: a fresh process that opens the store and answers one query (median of
  --repeats, whole process wall time, Python's start-up included);
* --singles single-vector queries, k = 5, one call each: p50/p99 latency;
* one batch of the 10,000 queries, k = 5: queries/s and recall@5 against exact search (NumPy);
* the membership workload: 20,000 claims (each test image with its true class and with a random
  wrong one), the 3 nearest stored members of the claimed class: claims/s, recall@3 against the
  exact answer, and membership F1 at the index's calibrated threshold and support (distances to
  the members found are recomputed exactly, so F1 differs only by which members were found).
  That is the "distance" rule, which a class-filtered search in any store answers; indexes built
  with the default "nearest-class" rule also search unfiltered for a nearer class, which this
  workload leaves out for every store alike.

Approximate peers are tuned to matched recall: for each workload, the smallest setting of their
knob whose recall on the first 1,000 queries (2,000 claims) reaches --recall; a peer that never
reaches it runs at its largest setting, marked. Throughputs are medians of --repeats runs.

    pip install -e '.[bench]'
    python tools/bench_peers.py --index mnist-train
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from benchlib import blas_kernels, markdown_table
from peers import PEERS, Peer, PeerMissing, folder_bytes

HNSW_EF = [8, 12, 16, 20, 24, 32, 48, 64, 96, 128, 256]
SETTINGS = {  # the knob's candidates, smallest (fastest) first
    "siamindex IVF256": [1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32, 64],
    "siamindex HNSW32": HNSW_EF,
    "hnswlib": HNSW_EF,
    "usearch": HNSW_EF,
    "chroma": HNSW_EF,
}
K, MEMBERS = 5, 3


@dataclass
class Row:
    peer: str
    status: str = "ok"
    build_seconds: float | None = None
    disk_mb: float | None = None
    cold_open_seconds: float | None = None
    single_p50_ms: float | None = None
    single_p99_ms: float | None = None
    batch_setting: int | None = None
    batch_qps: float | None = None
    batch_recall: float | None = None
    members_setting: int | None = None
    members_qps: float | None = None
    members_recall: float | None = None
    members_f1: float | None = None
    notes: list[str] = field(default_factory=list)


def exact_neighbours(stored: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(n, k) rows of the k nearest stored vectors, by brute-force NumPy (the reference)."""
    norms = np.einsum("ij,ij->i", stored, stored)
    out = np.empty((len(queries), k), dtype=np.int64)
    wide = stored.T.astype(np.float64)
    chunk = max(1, min(1000, 100_000_000 // max(1, len(stored))))  # <= 0.8 GB of distances
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk].astype(np.float64)
        squared = norms[None, :] - 2 * q @ wide
        part = np.argpartition(squared, k - 1, axis=1)[:, :k]
        order = np.argsort(np.take_along_axis(squared, part, axis=1), axis=1)
        out[start : start + len(q)] = np.take_along_axis(part, order, axis=1)
    return out


def exact_members(
    stored: np.ndarray, labels: np.ndarray, queries: np.ndarray, classes: np.ndarray, k: int
) -> np.ndarray:
    """(n, k) stored ids of the k nearest members of each query's class (NumPy)."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for label in np.unique(classes):
        where = np.flatnonzero(classes == label)
        members = np.flatnonzero(labels == label)
        out[where] = members[exact_neighbours(stored[members], queries[where], k)]
    return out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true neighbours found (recall@k), over all queries."""
    hits = sum(len(set(f[f >= 0]) & set(t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def membership_f1(
    stored: np.ndarray,
    queries: np.ndarray,
    found: np.ndarray,
    is_member: np.ndarray,
    threshold: float,
    support: int,
) -> float:
    """F1 of "accepted" = the support-th found member within the threshold (exact distances)."""
    from sklearn.metrics import f1_score

    ids = found[:, support - 1]
    distance = np.where(
        ids >= 0, np.linalg.norm(stored[np.maximum(ids, 0)] - queries, axis=1), np.inf
    )
    return float(f1_score(is_member, distance <= threshold))


def timed(run, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """Median seconds of ``repeats`` calls (after one warm-up call) and the last answer."""
    answer = run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        answer = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), answer


def within_budget(ask, total: int, budget: float) -> int:  # type: ignore[no-untyped-def]
    """How many of ``total`` items ``ask(n)`` answers in about ``budget`` seconds: all of them
    unless growing probes (10, 40, 160, ... items) say the whole workload would take longer."""
    probe = min(total, 10)
    while True:
        started = time.perf_counter()
        ask(probe)
        elapsed = time.perf_counter() - started
        if probe >= total or elapsed > budget / 20:
            break
        probe = min(total, probe * 4)
    per_item = elapsed / probe
    return total if per_item * total <= budget else max(10, min(total, int(budget / per_item)))


def open_peer(name: str, setting: int | None, folder: Path) -> Peer:
    peer = PEERS[name](setting)
    peer.open(folder)
    return peer


def tune(
    name: str, folder: Path, ask, truth: np.ndarray, target: float, row: Row, what: str
) -> tuple[Peer, int | None]:  # type: ignore[no-untyped-def]
    """The peer opened at the smallest setting that reaches ``target`` recall on ``ask``."""
    candidates = SETTINGS.get(name, [None])
    for setting in candidates:
        peer = open_peer(name, setting, folder)
        if setting is None or recall(ask(peer), truth) >= target:
            return peer, setting
        peer.close()
    row.notes.append(f"{what}: recall {target} not reached; largest setting used")
    return open_peer(name, candidates[-1], folder), candidates[-1]


def cold_open(name: str, folder: Path, query: np.ndarray, repeats: int) -> float:
    """Median wall seconds of a fresh process that opens the store and answers one query."""
    np.save(folder.parent / "query.npy", query)
    command = [sys.executable, __file__, "--cold", name, str(folder)]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure(name: str, work: Path, data: dict[str, np.ndarray], args: argparse.Namespace) -> Row:
    row = Row(name)
    stored, labels, queries = data["stored"], data["labels"], data["queries"]
    claims_q, claims_c = data["claim_queries"], data["claim_classes"]
    builds = []
    for attempt in range(args.build_repeats):
        folder = work / f"{name.replace(' ', '-')}-{attempt}"
        started = time.perf_counter()
        PEERS[name](None).build(folder, stored, labels)
        builds.append(time.perf_counter() - started)
    row.build_seconds = statistics.median(builds)
    row.disk_mb = folder_bytes(folder) / 1e6
    row.cold_open_seconds = cold_open(name, folder, queries[0], args.repeats)

    batch_truth, member_truth = data["batch_truth"], data["member_truth"]
    tuning, claims_tuning = slice(0, 1000), slice(0, 2000)
    peer, row.batch_setting = tune(
        name,
        folder,
        lambda p: p.batch(queries[tuning], K),
        batch_truth[tuning],
        args.recall,
        row,
        "batch",
    )
    count = within_budget(
        lambda n: [peer.single(q, K) for q in queries[:n]], args.singles, args.budget
    )
    singles = queries[:count]
    if count < args.singles:
        row.notes.append(f"single queries: {count:,} of {args.singles:,} (time budget)")
    p50s, p99s = [], []
    for _ in range(args.repeats):
        latencies = np.empty(len(singles))
        for i, query in enumerate(singles):
            started = time.perf_counter()
            peer.single(query, K)
            latencies[i] = time.perf_counter() - started
        p50s.append(float(np.percentile(latencies, 50)) * 1e3)
        p99s.append(float(np.percentile(latencies, 99)) * 1e3)
    row.single_p50_ms, row.single_p99_ms = statistics.median(p50s), statistics.median(p99s)
    count = within_budget(lambda n: peer.batch(queries[:n], K), len(queries), args.budget)
    if count < len(queries):
        row.notes.append(f"batch: {count:,} of {len(queries):,} queries (time budget)")
    seconds, found = timed(lambda: peer.batch(queries[:count], K), args.repeats)
    row.batch_qps, row.batch_recall = count / seconds, recall(found, batch_truth[:count])
    peer.close()

    peer, row.members_setting = tune(
        name,
        folder,
        lambda p: p.members(claims_q[claims_tuning], claims_c[claims_tuning], MEMBERS),
        member_truth[claims_tuning],
        args.recall,
        row,
        "membership",
    )
    built = getattr(peer, "partition_seconds", None)
    if built is not None:
        row.notes.append(
            f"membership: class graphs read in {built:.1f} s on first use (kept in the bundle; "
            "built with it, in the build column)"
        )
    count = within_budget(
        lambda n: peer.members(claims_q[:n], claims_c[:n], MEMBERS), len(claims_q), args.budget
    )
    if count < len(claims_q):
        row.notes.append(
            f"membership: {count:,} of {len(claims_q):,} claims (time budget; claims are in "
            "random order, so any prefix is a fair sample)"
        )
    seconds, found = timed(
        lambda: peer.members(claims_q[:count], claims_c[:count], MEMBERS), args.repeats
    )
    row.members_qps = count / seconds
    row.members_recall = recall(found, member_truth[:count])
    row.members_f1 = membership_f1(
        stored,
        claims_q[:count],
        found,
        data["is_member"][:count],
        data["threshold"],
        data["support"],
    )
    peer.close()
    return row


def load(index_name: str, limit: int | None) -> dict[str, np.ndarray]:
    """The stored vectors of an index of MNIST's train split, and the test split as queries."""
    from siamindex.data import load_dataset
    from siamindex.index import Index

    index = Index.open(index_name)
    rows = index.store.rows
    if set(rows.split) != {"train"}:
        raise SystemExit(
            f"{index_name} must hold the train split only (queries are the test split)"
        )
    test = load_dataset(split="test")
    if limit:
        test = test.subset(slice(0, limit))
    names = index.store.class_names
    return prepare(
        rows.embeddings,
        rows.labels,
        index.embed(test.images),
        np.array([names.index(str(c)) for c in test.labels]),
        float(index.facts.threshold),
        int(index.facts.support),
    )


def prepare(
    stored: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    query_labels: np.ndarray,
    threshold: float,
    support: int,
) -> dict[str, np.ndarray]:
    """Everything the workloads ask and the exact answers they are checked against."""
    from siamindex.evaluation import true_and_false_claims

    claims = true_and_false_claims(query_labels, np.random.default_rng(0))
    # Random order, so that a prefix (the tuning set, or a slow peer's time-bounded share) is a
    # fair sample of true and false claims of every class.
    order = np.random.default_rng(1).permutation(len(claims.rows))
    stored = np.ascontiguousarray(stored, dtype=np.float32)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    claim_queries = np.ascontiguousarray(queries[claims.rows[order]])
    return {
        "stored": stored,
        "labels": labels,
        "queries": queries,
        "claim_queries": claim_queries,
        "claim_classes": claims.classes[order],
        "is_member": claims.is_member[order],
        "threshold": threshold,  # type: ignore[dict-item]
        "support": support,  # type: ignore[dict-item]
        "batch_truth": exact_neighbours(stored, queries, K),
        "member_truth": exact_members(
            stored, labels, claim_queries, claims.classes[order], MEMBERS
        ),
    }


def _number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row]) -> str:
    header = (
        "peer",
        "build s",
        "disk MB",
        "cold open s",
        "single p50 / p99 ms",
        "batch q/s (recall@5, setting)",
        "membership claims/s (recall@3, setting)",
        "membership F1",
    )
    cells = []
    for r in rows:
        if r.status != "ok":
            cells.append((r.peer, r.status, "", "", "", "", "", ""))
            continue
        cells.append(
            (
                r.peer,
                _number(r.build_seconds, ".1f"),
                _number(r.disk_mb, ".1f"),
                _number(r.cold_open_seconds, ".2f"),
                f"{r.single_p50_ms:.3f} / {r.single_p99_ms:.3f}",
                f"{r.batch_qps:,.0f} ({r.batch_recall:.4f}"
                + ("" if r.batch_setting is None else f", {r.batch_setting}")
                + ")",
                f"{r.members_qps:,.0f} ({r.members_recall:.4f}"
                + ("" if r.members_setting is None else f", {r.members_setting}")
                + ")",
                _number(r.members_f1, ".4f"),
            )
        )
    return markdown_table(header, cells)


def ratios(rows: list[Row], target: float) -> dict[str, dict[str, float]]:
    """siamindex's best variant at >= target recall over each peer, per workload (>1: ahead).

    For latencies and times the ratio is the peer's over siamindex's (so >1 still means ahead).
    """
    ok = [r for r in rows if r.status == "ok"]
    ours = [r for r in ok if r.peer.startswith("siamindex")]
    theirs = [r for r in ok if not r.peer.startswith("siamindex")]

    def best(attr: str, recall_attr: str | None, higher: bool) -> float:
        values = [
            getattr(r, attr)
            for r in ours
            if recall_attr is None or getattr(r, recall_attr) >= target - 1e-9
        ]
        return max(values) if higher else min(values)

    out: dict[str, dict[str, float]] = {}
    for r in theirs:
        out[r.peer] = {
            "batch q/s": best("batch_qps", "batch_recall", True) / r.batch_qps,  # type: ignore[operator]
            "membership claims/s": best("members_qps", "members_recall", True) / r.members_qps,  # type: ignore[operator]
            "single p50": r.single_p50_ms / best("single_p50_ms", "batch_recall", False),  # type: ignore[operator]
            "build": r.build_seconds / best("build_seconds", None, False),  # type: ignore[operator]
            "cold open": r.cold_open_seconds / best("cold_open_seconds", None, False),  # type: ignore[operator]
            "disk": r.disk_mb / best("disk_mb", None, False),  # type: ignore[operator]
        }
    return out


def figure(ratio: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peers = list(ratio)
    workloads = list(next(iter(ratio.values())))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    width = 0.8 / len(workloads)
    for i, workload in enumerate(workloads):
        values = [ratio[p][workload] for p in peers]
        ax.bar(np.arange(len(peers)) + i * width, values, width, label=workload)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(peers)) + width * (len(workloads) - 1) / 2, peers)
    ax.set_ylabel("siamindex's advantage (x, log; > 1: siamindex ahead)")
    ax.set_title("siamindex (best variant at matched recall) against each peer, same vectors")
    ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def cold_child(name: str, folder: Path) -> None:
    """--cold: open the store in this fresh process and answer one query."""
    query = np.load(folder.parent / "query.npy")
    peer = open_peer(name, SETTINGS.get(name, [None])[0], folder)
    peer.batch(query[None, :], K)
    peer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="mnist-train")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--build-repeats", type=int, default=3)
    parser.add_argument("--singles", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds per workload before sampling a prefix"
    )
    parser.add_argument("--recall", type=float, default=0.99, help="matched recall target")
    parser.add_argument("--json", type=Path, default=Path("tools/figures/bench_peers.json"))
    parser.add_argument("--figure", type=Path, default=Path("tools/figures/peers.png"))
    parser.add_argument("--cold", nargs=2, metavar=("PEER", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cold:
        cold_child(args.cold[0], Path(args.cold[1]))
        return
    names = [n.strip() for n in args.peers.split(",")]
    unknown = set(names) - set(PEERS)
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}; choose from {', '.join(PEERS)}")
    started = time.perf_counter()
    data = load(args.index, args.limit)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as work:
        for name in names:
            try:
                row = measure(name, Path(work), data, args)
            except PeerMissing as missing:
                row = Row(name, status=f"not measured: {missing}")
            rows.append(row)
            print(f"{name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    ratio = ratios(rows, args.recall)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": [asdict(r) for r in rows], "ratios": ratio}, indent=2))
    if ratio:
        figure(ratio, args.figure)
    print(
        f"{len(data['stored']):,} stored {data['stored'].shape[1]}-d vectors ({args.index}), "
        f"{len(data['queries']):,} queries, {len(data['claim_queries']):,} claims; "
        f"medians of {args.repeats} runs; matched recall >= {args.recall}; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print(table(rows))
    for r in rows:
        for note in r.notes:
            print(f"- {r.peer}: {note}")
    if ratio:
        print("\nsiamindex's advantage over each peer (x; > 1: siamindex ahead)\n")
        workloads = list(next(iter(ratio.values())))
        print(
            markdown_table(
                ("peer", *workloads),
                [(p, *(f"{v[w]:.2f}" for w in workloads)) for p, v in ratio.items()],
            )
        )
    print("\nBLAS: " + "; ".join(blas_kernels()))


if __name__ == "__main__":
    main()
