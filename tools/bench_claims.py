"""Queries and membership checks: accuracy on held-out data, and claims per second.

An index of the MNIST train split only is built with the given encoder; the 10,000 test images
are the queries, so no query can find itself.

* 1-NN accuracy: each test image's predicted class (``Index.query``, k=1).
* 20,000 claims: each test image once with its true class, once with a random wrong class;
  accuracy, precision, recall and F1 at the calibrated global threshold and per class.
* Throughput, medians of --repeats runs: claims/s warm in-process including embedding
  (``Index.check``), the class-restricted FAISS search alone on the same embeddings, a
  brute-force NumPy reference on the same embeddings (its answers are checked equal), and the
  CLI end to end (``siamindex check --claims``, a fresh process each time).

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
from siamindex.query import check_membership, membership_summary


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
        reference = brute_force(
            store.rows.embeddings, store.rows.labels, vectors, groups, index.facts.support
        )
        faiss_distances = np.array(
            [r.support_distance for r in check_membership(store, partition, vectors, names, groups)]
        )
        np.testing.assert_allclose(faiss_distances, reference, atol=1e-3)

        warm = median_seconds(lambda: index.check(images, classes), args.repeats)
        search_only = median_seconds(
            lambda: partition.nearest(vectors, groups, support=index.facts.support), args.repeats
        )
        numpy_only = median_seconds(
            lambda: brute_force(
                store.rows.embeddings, store.rows.labels, vectors, groups, index.facts.support
            ),
            args.repeats,
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
        f"queries: the 10,000 test images; threshold {store.facts.threshold:.4f} (Euclidean)"
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
                    "warm, in process: embed + FAISS class search",
                    f"{warm:.3f}",
                    f"{n / warm:,.0f}",
                    f"{numpy_only / warm:.1f}x",
                ),
                (
                    "FAISS class search alone (same embeddings)",
                    f"{search_only:.3f}",
                    f"{n / search_only:,.0f}",
                    f"{numpy_only / search_only:.1f}x",
                ),
                (
                    "brute-force NumPy (same embeddings)",
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
