"""Training benchmark: the article's model reproduced, the default encoder, and raw pixels.

Trains each model (median of --repeats runs for times), then measures it on the MNIST test split
against the train split with ``siamindex.evaluation.evaluate`` (the same code as
``siamindex evaluate``), raw pixels measured in the same run as the baseline.

    python tools/bench_train.py --repeats 3 --out-dir models/bench

Prints a table and writes ``bench_train.json`` into --out-dir.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
from pathlib import Path

from benchlib import blas_kernels, markdown_table

from siamindex import model
from siamindex.evaluation import evaluate
from siamindex.training import TrainConfig, train

RUNS = {
    "article (article-mlp, article pairs, 20 epochs)": TrainConfig(architecture="article-mlp"),
    "default (cnn, in-batch pairs)": TrainConfig(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=1, help="training runs per model (seeds 0..)"
    )
    parser.add_argument("--out-dir", default="models/bench")
    parser.add_argument("--only", choices=["article", "default"], default=None)
    parser.add_argument(
        "--table-only",
        action="store_true",
        help="re-print the table of the last run in --out-dir without training",
    )
    parser.add_argument(
        "--evaluate-only",
        action="store_true",
        help="re-measure the encoders of the last run without training them again",
    )
    args = parser.parse_args()
    out_dir = Path(args.out_dir)
    if args.table_only or args.evaluate_only:
        saved = json.loads((out_dir / "bench_train.json").read_text())
        for result in saved.values() if args.evaluate_only else []:
            encoder = model.load_encoder(result["encoder_file"])
            result["evaluation"] = evaluate(functools.partial(model.embed, encoder), seed=0)
        (out_dir / "bench_train.json").write_text(json.dumps(saved, indent=2))
        print(table(saved))
        print("\nBLAS: " + "; ".join(blas_kernels()))
        return
    results: dict[str, dict[str, object]] = {}
    for label, config in RUNS.items():
        if args.only and not label.startswith(args.only):
            continue
        runs = []
        for seed in range(args.repeats):
            path = out_dir / f"{config.architecture}-seed{seed}.keras"
            runs.append(
                train(TrainConfig(**{**config.__dict__, "seed": seed}), path, progress=False)
            )
        seconds = [r.report["train_seconds"] for r in runs]
        best = runs[0]
        measured = evaluate(functools.partial(model.embed, model.load_encoder(best.path)), seed=0)
        results[label] = {
            "encoder_file": str(best.path),
            "train_seconds_median": statistics.median(seconds),
            "train_seconds": seconds,
            "epochs_run": [r.report["epochs_run"] for r in runs],
            "test_pair_accuracy_from_training": [r.report["pair_accuracy"]["test"] for r in runs],
            "evaluation": measured,
        }
    saved = out_dir / "bench_train.json"
    if args.only and saved.exists():  # keep the other model's last results
        results = {**json.loads(saved.read_text()), **results}
        results = {label: results[label] for label in RUNS if label in results}
    saved.write_text(json.dumps(results, indent=2))
    print(table(results))
    print("\nBLAS: " + "; ".join(blas_kernels()))


def table(results: dict[str, dict[str, object]]) -> str:
    """Medians over the training runs; the evaluate columns are of the first run (seed 0)."""
    header = (
        "model",
        "runs",
        "train s",
        "epochs",
        "test pair acc @0.5",
        "ROC AUC",
        "1-NN",
        "MAP@R",
        "membership F1",
    )
    rows = []
    pixels = None
    for label, result in results.items():
        evaluation = result["evaluation"]
        encoder = evaluation["encoder"]  # type: ignore[index]
        pixels = evaluation["raw_pixels"]  # type: ignore[index]
        accuracies = result["test_pair_accuracy_from_training"]
        rows.append(
            (
                label,
                len(accuracies),
                f"{result['train_seconds_median']:.0f}",
                statistics.median(result["epochs_run"]),
                f"{statistics.median(accuracies):.4f} "
                f"({min(accuracies):.4f}-{max(accuracies):.4f})",
                f"{encoder['roc_auc']:.4f}",
                f"{encoder['one_nn_accuracy']:.4f}",
                f"{encoder['map_at_r']:.4f}",
                f"{encoder['membership']['f1']:.4f}",
            )
        )
    if pixels:
        rows.append(
            (
                "raw pixels (baseline, same run)",
                "-",
                "-",
                "-",
                "-",
                f"{pixels['roc_auc']:.4f}",
                f"{pixels['one_nn_accuracy']:.4f}",
                f"{pixels['map_at_r']:.4f}",
                f"{pixels['membership']['f1']:.4f}",
            )
        )
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
