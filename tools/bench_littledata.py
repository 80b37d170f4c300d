"""Little labelled data: the default encoder trained on N class-balanced train images (seeded),
those N images stored, the whole test split queried; beside raw pixels storing the same N.

For each N: 1-NN accuracy, MAP@R and membership F1 (each test image claimed with its true and a
random wrong class, at the threshold calibrated leave-one-out on the N stored), for the
encoder and for raw pixels (``evaluation.evaluate_vectors``, the same code for both). Small N
get more epochs so that every encoder takes at least --min-steps optimiser steps (early stopping
still applies). With --full-encoder, N = 60,000 uses that file (the default encoder, trained on
the whole train split) instead of training again.

    python tools/bench_littledata.py --full-encoder models/robust2/cnn-seed0.keras
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from benchlib import blas_kernels, markdown_table

from siamindex.data import balanced_sample, load_dataset
from siamindex.embedding import load_embedder
from siamindex.evaluation import evaluate_vectors, raw_pixels
from siamindex.training import TrainConfig, epochs_for, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000,60000")
    parser.add_argument("--full-encoder", help="encoder trained on all 60,000 (skip training)")
    parser.add_argument("--min-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", type=Path, default=Path("models/littledata"))
    args = parser.parse_args()
    full, test = load_dataset(split="train"), load_dataset(split="test")
    results, rows = [], []
    for count in [int(n) for n in args.sizes.split(",")]:
        stored = (
            full
            if count >= len(full)
            else balanced_sample(full, count, np.random.default_rng(args.seed))
        )
        started = time.perf_counter()
        if count >= len(full) and args.full_encoder:
            encoder, seconds = args.full_encoder, None
        else:
            config = TrainConfig(
                labelled=None if count >= len(full) else count,
                epochs=epochs_for(count, args.min_steps),
                seed=args.seed,
            )
            encoder = str(train(config, args.out_dir / f"cnn-{count}.keras", False).path)
            seconds = time.perf_counter() - started
        embed = load_embedder(encoder)
        found = {"labelled": count, "encoder_file": encoder, "train_seconds": seconds}
        for name, represent in (("encoder", embed), ("raw pixels", raw_pixels)):
            measured = evaluate_vectors(
                represent(stored.images),
                stored.labels,
                represent(test.images),
                test.labels,
                args.seed,
                pair_threshold=None,
            )
            found[name] = {
                "one_nn": measured["one_nn_accuracy"],
                "map_at_r": measured["map_at_r"],
                "f1": measured["membership"]["f1"],  # type: ignore[index]
            }
        results.append(found)
        print(json.dumps(found), flush=True)
        rows.append(
            [
                f"{count:,}",
                f"{found['encoder']['one_nn']:.4f}",
                f"{found['raw pixels']['one_nn']:.4f}",
                f"{found['encoder']['map_at_r']:.4f}",
                f"{found['raw pixels']['map_at_r']:.4f}",
                f"{found['encoder']['f1']:.4f}",
                f"{found['raw pixels']['f1']:.4f}",
                "-" if seconds is None else f"{seconds:.0f}",
            ]
        )
    print("BLAS:", "; ".join(blas_kernels()))
    header = ["labelled", "1-NN encoder", "1-NN raw", "MAP@R encoder", "MAP@R raw"]
    header += ["F1 encoder", "F1 raw", "train s"]
    print(markdown_table(header, rows))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench_littledata.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
