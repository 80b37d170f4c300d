"""Queries and membership checks: accuracy on held-out data, and claims per second.

An index of the MNIST train split only is built with the given encoder; the 10,000 test images
are the queries, so no query can find itself.

* 1-NN accuracy: each test image's predicted class (``Index.query``, k=1).
* 20,000 claims: each test image once with its true class, once with a random wrong class;
  accuracy, precision, recall and F1 at the calibrated global threshold and per class, under
  the index's rule (the default, nearest-class), beside an index built by the distance rule
  alone in the same run.
* Throughput, medians of --repeats runs: claims/s warm in-process including embedding
  (``Index.check``), the FAISS searches alone on the same embeddings (class-restricted, then
  unrestricted for a nearer class), a brute-force NumPy reference of the same rule on the same
  embeddings (its answers are checked equal), and the CLI end to end (``siamindex check
  --claims``, a fresh process each time).

    python tools/bench_claims.py --encoder models/bench/cnn-seed0.keras
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import blas_kernels, markdown_table, median_seconds
from sklearn.metrics import brier_score_loss

from siamindex.build import BuildSettings, build_index
from siamindex.data import load_dataset
from siamindex.evaluation import true_and_false_claims
from siamindex.metrics import calibration_error
from siamindex.query import check_membership, membership_summary, rival_reach


def brute_force(
    stored: np.ndarray, labels: np.ndarray, vectors: np.ndarray, groups: np.ndarray, support: int
) -> np.ndarray:
    """Distance from each vector to its support-th nearest stored member of the claimed class,
    in NumPy."""
    out = np.empty(len(vectors), dtype=np.float32)
    for group in np.unique(groups):
        where = np.flatnonzero(groups == group)
        members = stored[labels == group]
        squared = (
            np.sum(vectors[where] ** 2, axis=1)[:, None]
            - 2 * vectors[where] @ members.T
            + np.sum(members**2, axis=1)[None, :]
        )
        kth = np.partition(squared, support - 1, axis=1)[:, support - 1]
        out[where] = np.sqrt(np.maximum(kth, 0))
    return out


def brute_force_rule(
    stored: np.ndarray, labels: np.ndarray, vectors: np.ndarray, groups: np.ndarray, support: int
) -> tuple[np.ndarray, np.ndarray]:
    """The nearest-class rule in NumPy: each vector's support-th nearest member of every class;
    returns the claimed class's distance and the nearest other class whose support-th member
    is nearer (-1: none)."""
    classes = np.unique(labels)
    kth = np.empty((len(vectors), len(classes)), dtype=np.float32)
    for start in range(0, len(vectors), 5000):
        part = vectors[start : start + 5000]
        for c in classes:
            kth[start : start + len(part), c] = brute_force(
                stored, labels, part, np.full(len(part), c), support
            )
    own = kth[np.arange(len(vectors)), groups]
    others = kth.copy()
    others[np.arange(len(vectors)), groups] = np.inf
    best = np.argmin(others, axis=1)
    nearer = np.where(others[np.arange(len(vectors)), best] < own, best, -1)
    return own, nearer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    test = load_dataset(split="test")
    with tempfile.TemporaryDirectory() as folder:
        index, _ = build_index(
            BuildSettings(
                encoder=args.encoder,
                index=Path(folder) / "train-only",
                splits=("train",),
                progress=False,
            )
        )
        store = index.store
        queries = index.query(test.images, k=1)
        predicted = np.array([q.predicted if q.predicted is not None else "-" for q in queries])
        one_nn = float(
            np.mean(
                [
                    q.matches[0].class_name == str(t)
                    for q, t in zip(queries, test.labels, strict=True)
                ]
            )
        )
        open_set = float(np.mean(predicted == np.array([str(t) for t in test.labels])))

        claims = true_and_false_claims(test.labels, np.random.default_rng(args.seed))
        images = test.images[claims.rows]
        classes = [str(c) for c in claims.classes]
        truth = [str(t) for t in test.labels[claims.rows]]
        results = index.check(images, classes, true_classes=truth)
        summary = membership_summary(results)
        per_class_results = index.check(images, classes, per_class=True, true_classes=truth)
        per_class_summary = membership_summary(per_class_results)

        vectors = index.embed(images)
        groups = claims.classes.astype(np.int64)
        partition = index.partition
        names = [str(i) for i in range(len(groups))]
        names_of = list(store.class_names)
        reference = brute_force(
            store.rows.embeddings, store.rows.labels, vectors, groups, index.facts.support
        )
        answers = check_membership(store, partition, vectors, names, groups)
        faiss_distances = np.array([r.support_distance for r in answers])
        np.testing.assert_allclose(faiss_distances, reference, atol=1e-3)
        support = index.facts.support
        _, numpy_nearer = brute_force_rule(
            store.rows.embeddings, store.rows.labels, vectors, groups, support
        )
        faiss_nearer = np.array(
            [-1 if r.nearer_class is None else names_of.index(r.nearer_class) for r in answers]
        )
        # Claims within the threshold (or the probability's reach) are searched for a rival.
        reach = rival_reach(store, index.facts.threshold)
        within = faiss_distances <= reach
        agree = float(np.mean((faiss_nearer >= 0)[within] == (numpy_nearer >= 0)[within]))
        assert agree >= 0.999, f"nearer class: FAISS and NumPy agree on only {agree:.4f}"

        stored, labels = store.rows.embeddings, store.rows.labels

        def faiss_search() -> None:  # as check does: a nearer class only within reach
            _, _, kth = partition.nearest(vectors, groups, support=support)
            near = kth <= reach
            partition.nearer_class(vectors[near], groups[near], kth[near], support)

        def numpy_search() -> None:
            kth = brute_force(stored, labels, vectors, groups, support)
            near = kth <= reach
            brute_force_rule(stored, labels, vectors[near], groups[near], support)

        warm = median_seconds(lambda: index.check(images, classes), args.repeats)
        search_only = median_seconds(faiss_search, args.repeats)
        numpy_only = median_seconds(numpy_search, args.repeats)
        # The same claims against an index built by the distance rule alone, for comparison.
        by_distance, _ = build_index(
            BuildSettings(
                encoder=args.encoder,
                index=Path(folder) / "by-distance",
                splits=("train",),
                rule="distance",
                progress=False,
            )
        )
        distance_summary = membership_summary(
            by_distance.check(images, classes, true_classes=truth)
        )

        csv_path = Path(folder) / "claims.csv"
        csv_path.write_text(
            "image,class,true_class\n"
            + "".join(
                f"mnist:test:{row},{group},{label}\n"
                for row, group, label in zip(claims.rows, classes, truth, strict=True)
            )
        )
        command = [
            sys.executable,
            "-m",
            "siamindex",
            "check",
            "--claims",
            str(csv_path),
            "--index",
            str(index.path),
            "--format",
            "csv",
            "-q",
        ]
        cli_times = []
        for _ in range(max(1, args.repeats // 2)):
            started = time.perf_counter()
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
            cli_times.append(time.perf_counter() - started)
        cli = float(np.median(cli_times))

    n = len(groups)
    chance = np.array([r.probability for r in results])
    truth_of = np.array([r.class_name == r.true_class for r in results])
    print(
        f"index: MNIST train split ({len(store.rows)} images, {store.embedding_dim}-d, flat); "
        f"queries: the 10,000 test images; threshold {store.facts.threshold:.4f} (Euclidean); "
        f"rule {store.facts.rule}"
    )
    print("BLAS: " + "; ".join(blas_kernels()) + "\n")
    print(
        markdown_table(
            ("measure", "value"),
            [
                ("1-NN accuracy (nearest stored label)", f"{one_nn:.4f}"),
                ("open-set accuracy (predicted, 'no match' counts wrong)", f"{open_set:.4f}"),
                (
                    "membership accuracy, global threshold (20,000 claims)",
                    f"{summary['accuracy']:.4f}",
                ),
                ("membership F1, global threshold", f"{summary['f1']:.4f}"),
                (
                    "membership F1, distance rule alone (its own build)",
                    f"{distance_summary['f1']:.4f}",
                ),
                (
                    "membership accuracy, per-class thresholds",
                    f"{per_class_summary['accuracy']:.4f}",
                ),
                ("membership F1, per-class thresholds", f"{per_class_summary['f1']:.4f}"),
                (
                    "membership probability: calibration error (10 bins)",
                    f"{calibration_error(chance, truth_of):.4f}",
                ),
                (
                    "membership probability: Brier score (base rate alone)",
                    f"{brier_score_loss(truth_of, chance):.4f} "
                    f"({brier_score_loss(truth_of, np.full(n, truth_of.mean())):.4f})",
                ),
                (
                    "claims searched for a nearer class: share refused of share searched",
                    f"{np.mean(faiss_nearer[within] >= 0):.4f} of {within.mean():.4f} "
                    f"(FAISS and NumPy agree on {agree:.4f})",
                ),
                (
                    "confusion (TP/FP/FN/TN), distance rule alone",
                    f"{distance_summary['true_positive']}/{distance_summary['false_positive']}/"
                    f"{distance_summary['false_negative']}/{distance_summary['true_negative']}",
                ),
                (
                    "confusion (TP/FP/FN/TN), global",
                    f"{summary['true_positive']}/{summary['false_positive']}/"
                    f"{summary['false_negative']}/{summary['true_negative']}",
                ),
            ],
        )
    )
    print()
    print(
        markdown_table(
            ("class", *summary["per_class"].keys()),
            [("F1", *(f"{v['f1']:.4f}" for v in summary["per_class"].values()))],
        )
    )
    print()
    print(
        markdown_table(
            ("path (20,000 claims)", "seconds", "claims/s", "vs NumPy"),
            [
                (
                    "warm, in process: embed + FAISS search",
                    f"{warm:.3f}",
                    f"{n / warm:,.0f}",
                    f"{numpy_only / warm:.1f}x",
                ),
                (
                    "FAISS class + nearer-class search alone",
                    f"{search_only:.3f}",
                    f"{n / search_only:,.0f}",
                    f"{numpy_only / search_only:.1f}x",
                ),
                (
                    "brute-force NumPy, the same rule",
                    f"{numpy_only:.3f}",
                    f"{n / numpy_only:,.0f}",
                    "1.0x",
                ),
                (
                    "CLI end to end, fresh process (check --claims)",
                    f"{cli:.2f}",
                    f"{n / cli:,.0f}",
                    "-",
                ),
            ],
        )
    )


if __name__ == "__main__":
    main()
