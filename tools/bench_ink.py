"""InkLevels' grey opening: maxima of shifted slices (``model.window_max``) against TensorFlow's
stride-1 ``max_pool`` (what it was), side by side, alternated, best of --repeats.

Measures, in a fresh process per run, a training step of the default recipe (digits and
non-digits, augmented; a new cnn encoder) and TensorFlow-graph embedding of the 10,000 MNIST
test images, and checks that both ways give the same vectors.

    python tools/bench_ink.py
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

import keras
import numpy as np
from benchlib import markdown_table

from siamindex import data, model
from siamindex.training import TrainConfig, _robust_batches


def pooled_max(images: Any, window: int) -> Any:
    """What ``model.window_max`` replaced: TensorFlow's stride-1 ``max_pool``."""
    from keras import ops

    return ops.max_pool(images, window, strides=1, padding="same")


WAYS = {"shifted slices (now)": None, "max_pool (before)": pooled_max}


def measure(way: str, steps: int) -> dict[str, float]:
    """In this process (a fresh one each time: in one process the second model trained ran at
    a different speed from the first whatever the way): seconds of a training step and of the
    graph embedding of the 10,000 test images."""
    window_max = WAYS[way]
    if window_max is not None:
        model.window_max = window_max  # InkLevels.call looks it up at each call
    train = data.load_dataset()
    x, y = model.as_model_input(train.images[:20_000]), train.labels[:20_000]
    batches, _ = _robust_batches(TrainConfig(seed=0).resolved(), x, y)
    test = data.load_dataset(split="test").images
    encoder = model.build_encoder("cnn")
    encoder.compile(optimizer="adam", loss=model.InBatchContrastiveLoss(1.0))
    encoder.fit(batches, steps_per_epoch=10, epochs=1, verbose=0)  # trace
    started = time.perf_counter()
    encoder.fit(batches, steps_per_epoch=steps, epochs=1, verbose=0)
    step = (time.perf_counter() - started) / steps
    model.embed(encoder, test[:256], compiled=False)  # trace
    started = time.perf_counter()
    model.embed(encoder, test, compiled=False)
    embed = time.perf_counter() - started
    # Grey paper, so that the opening matters; the same weights for both ways.
    keras.utils.set_random_seed(0)
    vectors = model.embed(model.build_encoder("cnn"), test[:2_000] // 3 + 60, compiled=False)
    return {"step": step, "embed": embed, "vectors": vectors.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--child", choices=list(WAYS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.steps)))
        return
    runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    for _ in range(args.repeats):
        for way in WAYS:
            command = [sys.executable, __file__, "--child", way, "--steps", str(args.steps)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs[way].append(json.loads(out.splitlines()[-1]))
    step = {way: min(r["step"] for r in runs[way]) for way in WAYS}
    embed = {way: min(r["embed"] for r in runs[way]) for way in WAYS}
    base = "max_pool (before)"
    rows = [
        [
            way,
            f"{1000 * step[way]:.0f}",
            f"{step[base] / step[way]:.2f}x",
            f"{embed[way]:.2f}",
            f"{embed[base] / embed[way]:.2f}x",
        ]
        for way in WAYS
    ]
    header = ["InkLevels by", "train step ms", "vs max_pool", "embed 10k s (graph)", "vs max_pool"]
    print(f"fresh process per run, best of {args.repeats}, {args.steps} steps of 160 images")
    print(markdown_table(header, rows))
    first, second = (np.array(runs[way][0]["vectors"]) for way in WAYS)
    print(f"largest difference between the two ways' vectors: {np.abs(first - second).max()}")


if __name__ == "__main__":
    main()
