"""Robustness: corrupted digits and non-digits against the clean train-split index, beside raw
pixels measured the same way in the same run.

Two indexes of the 60,000 MNIST train images are built in one run: one with the encoder, one
whose "encoder" is the raw pixels (784-d, the same build, calibration and membership rule). Both
are asked the same questions through ``Index.query`` and ``Index.check`` (what the CLI runs):

* the 10,000 test images under each corruption (``siamindex.corruptions``): 1-NN accuracy, and
  membership F1 of 20,000 claims (each image with its true class and a random wrong one);
* each non-digit set (``siamindex.outliers``): the share answered "no match" by ``query``, and
  the share of false claims (each image claimed as a random class) accepted by ``check``;
* the share of true claims about clean test digits accepted (the other side of rejection).

    python tools/bench_robust.py --encoder models/bench/cnn-seed0.keras

Prints two tables and writes the numbers to --json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import blas_kernels, markdown_table

from siamindex.build import BuildSettings, build_index
from siamindex.corruptions import CORRUPTIONS, corrupt
from siamindex.data import load_dataset
from siamindex.defaults import PREPARE_MODES
from siamindex.errors import DataError
from siamindex.evaluation import raw_pixels, true_and_false_claims
from siamindex.index import Index
from siamindex.outliers import OUTLIER_SETS, outliers
from siamindex.prepare import prepare
from siamindex.query import membership_summary


def digits_measures(index: Index, images: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """1-NN accuracy and membership F1 (true and wrong-class claims) of labelled digits."""
    nearest = index.query(images, k=1)
    one_nn = np.mean(
        [r.matches[0].class_name == str(t) for r, t in zip(nearest, labels, strict=True)]
    )
    claims = true_and_false_claims(labels, np.random.default_rng(seed))
    results = index.check(
        images[claims.rows],
        [str(c) for c in claims.classes],
        true_classes=[str(t) for t in labels[claims.rows]],
    )
    summary = membership_summary(results) or {}
    return {"one_nn": float(one_nn), "f1": float(summary["f1"]), "recall": summary["recall"]}


def rejection_measures(index: Index, images: np.ndarray, seed: int) -> dict:
    """Share answered "no match", and share of claims of a random class accepted."""
    no_match = np.mean([r.predicted is None for r in index.query(images, k=1)])
    claimed = np.random.default_rng(seed).integers(0, len(index.store.class_names), len(images))
    checks = index.check(images, [index.store.class_names[c] for c in claimed])
    return {"no_match": float(no_match), "accepted": float(np.mean([r.is_member for r in checks]))}


def prepared(images: np.ndarray, mode: str) -> np.ndarray:
    """Images through ``prepare`` (an image with no ink left stays as it was)."""
    if mode == "none":
        return images
    out = []
    for image in images:
        try:
            out.append(prepare(image, mode))
        except DataError:  # blank: the CLI would refuse it; measure it as given
            out.append(image)
    return np.stack(out)


def build(folder: Path, name: str, encoder: Path, embed=None) -> Index:  # type: ignore[no-untyped-def]
    settings = BuildSettings(
        encoder=encoder, index=folder / name, splits=("train",), progress=False
    )
    index, _ = build_index(settings, embed=embed)
    return index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=10_000, help="test images per corruption")
    parser.add_argument("--outliers", type=int, default=1000, help="images per non-digit set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("models/bench/bench_robust.json"))
    parser.add_argument(
        "--prepare",
        choices=PREPARE_MODES,
        default="none",
        help="pass every image through --prepare first (as the CLI does with IMAGE files)",
    )
    args = parser.parse_args()
    test = load_dataset(split="test").subset(slice(0, args.limit))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        stand_in = Path(folder) / "raw-pixels.keras"
        stand_in.write_text("raw pixels: no encoder\n")
        indexes = {
            "encoder": build(Path(folder), "encoder", args.encoder),
            "raw pixels": build(Path(folder), "pixels", stand_in, embed=raw_pixels),
        }
        digits = {"clean": test.images} | {
            name: corrupt(test.images, name, args.seed) for name in CORRUPTIONS
        }
        digits = {name: prepared(images, args.prepare) for name, images in digits.items()}
        shifted = {
            name: {
                rep: digits_measures(ix, images, test.labels, args.seed)
                for rep, ix in indexes.items()
            }
            for name, images in digits.items()
        }
        rejected = {
            name: {
                rep: rejection_measures(
                    ix, prepared(outliers(name, args.outliers, args.seed), args.prepare), args.seed
                )
                for rep, ix in indexes.items()
            }
            for name in OUTLIER_SETS
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"digits": shifted, "outliers": rejected}, indent=2))
    print(report(shifted, rejected, args, time.perf_counter() - started))
    print("\nBLAS: " + "; ".join(blas_kernels()))


def report(shifted: dict, rejected: dict, args: argparse.Namespace, seconds: float) -> str:
    rows = [
        (
            name,
            f"{m['encoder']['one_nn']:.4f}",
            f"{m['raw pixels']['one_nn']:.4f}",
            f"{m['encoder']['f1']:.4f}",
            f"{m['raw pixels']['f1']:.4f}",
        )
        for name, m in shifted.items()
    ]
    corrupted = [m for name, m in shifted.items() if name != "clean"]
    rows.append(
        (
            "mean over corruptions",
            *(
                f"{np.mean([m[rep][key] for m in corrupted]):.4f}"
                for key in ("one_nn",)
                for rep in ("encoder", "raw pixels")
            ),
            *(
                f"{np.mean([m[rep]['f1'] for m in corrupted]):.4f}"
                for rep in ("encoder", "raw pixels")
            ),
        )
    )
    header = ("test images", "1-NN encoder", "1-NN raw pixels", "F1 encoder", "F1 raw pixels")
    ood_rows = [
        (
            name,
            f"{m['encoder']['no_match']:.3f}",
            f"{m['raw pixels']['no_match']:.3f}",
            f"{m['encoder']['accepted']:.3f}",
            f"{m['raw pixels']['accepted']:.3f}",
        )
        for name, m in rejected.items()
    ]
    ood_header = (
        "non-digits",
        "'no match' encoder",
        "'no match' raw pixels",
        "false claims accepted, encoder",
        "raw pixels",
    )
    clean = shifted["clean"]
    return (
        f"{args.limit} test images per row against the 60,000 train images; "
        f"{args.outliers} images per non-digit set; seed {args.seed}; --prepare {args.prepare}; "
        f"{seconds:.0f} s\n\n"
        + markdown_table(header, rows)
        + "\n\n"
        + markdown_table(ood_header, ood_rows)
        + f"\n\ntrue claims about clean test digits accepted: encoder "
        f"{clean['encoder']['recall']:.4f}, raw pixels {clean['raw pixels']['recall']:.4f}"
    )


if __name__ == "__main__":
    main()
