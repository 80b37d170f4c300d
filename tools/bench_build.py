"""build-index benchmark: seconds and peak memory of each phase over all 70,000 MNIST images.

Each run is a fresh process that builds a new index with a given encoder (nothing is trained),
as `siamindex build-index --encoder PATH` does, so loading the data and the encoder is counted.
The table gives the median of --repeats runs, and the wall time of the whole CLI command
(interpreter and TensorFlow start-up included) measured the same way. Then, in another fresh
process, the same 70,000 images embedded by TensorFlow's graph and XLA-compiled, side by side.

    python tools/bench_build.py --encoder models/bench/cnn-seed0.keras --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import blas_kernels, markdown_table

PHASES = ("load", "embed", "add", "calibrate", "write")
ONE_BUILD = """
import json, sys
from siamindex.build import BuildSettings, build_index
index, phases = build_index(BuildSettings(encoder=sys.argv[2], index=sys.argv[1], progress=False))
print(json.dumps({"seconds": phases.seconds, "peak_mb": phases.peak_mb,
                  "count": index.info().count}))
"""
EMBED_BOTH = """
import json, sys, time
import numpy as np
from siamindex import model
from siamindex.data import load_dataset
encoder = model.load_encoder(sys.argv[1])
images = np.concatenate([load_dataset(split="train").images, load_dataset(split="test").images])
out = {}
for compiled in (False, True):
    model.embed(encoder, images[:3000], compiled=compiled)  # traced / compiled before timing
    started = time.perf_counter()
    vectors = model.embed(encoder, images, compiled=compiled)
    out[str(compiled)] = [time.perf_counter() - started, vectors]
gap = float(np.abs(out["True"][1] - out["False"][1]).max())
print(json.dumps({"graph": out["False"][0], "xla": out["True"][0], "gap": gap}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs, cli_seconds = [], []
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.repeats):
            done = subprocess.run(
                [sys.executable, "-c", ONE_BUILD, str(Path(folder) / f"lib{i}"), args.encoder],
                check=True,
                capture_output=True,
                text=True,
            )
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
            started = time.perf_counter()
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "siamindex",
                    "build-index",
                    "--index",
                    str(Path(folder) / f"cli{i}"),
                    "--encoder",
                    args.encoder,
                    "-q",
                ],
                check=True,
                capture_output=True,
            )
            cli_seconds.append(time.perf_counter() - started)
    rows = [
        (
            phase,
            f"{statistics.median(r['seconds'][phase] for r in runs):.2f}",
            f"{max(r['peak_mb'].get(phase, 0) for r in runs):.0f}",
        )
        for phase in PHASES
    ]
    total = statistics.median(sum(r["seconds"].values()) for r in runs)
    rows.append(
        ("all phases", f"{total:.2f}", f"{max(max(r['peak_mb'].values()) for r in runs):.0f}")
    )
    rows.append(
        (
            "`siamindex build-index --encoder` (whole command)",
            f"{statistics.median(cli_seconds):.2f}",
            "-",
        )
    )
    print(
        f"build-index over {runs[0]['count']} images, median of {args.repeats} fresh-process runs\n"
    )
    print(markdown_table(("phase", "seconds", "peak RSS MB (whole process)"), rows))
    done = subprocess.run(
        [sys.executable, "-c", EMBED_BOTH, args.encoder], check=True, capture_output=True, text=True
    )
    both = json.loads(done.stdout.strip().splitlines()[-1])
    count = runs[0]["count"]
    print(f"\nEmbedding the same {count} images in one fresh process, side by side:\n")
    print(
        markdown_table(
            ("encoder run as", "seconds", "images/s", "vs graph"),
            [
                (
                    label,
                    f"{both[key]:.2f}",
                    f"{count / both[key]:,.0f}",
                    f"{both['graph'] / both[key]:.1f}x",
                )  # fmt: skip
                for label, key in (
                    ("TensorFlow graph", "graph"),
                    ("XLA-compiled (the default from 2,048 images)", "xla"),
                )
            ],
        )
    )
    print(f"largest difference between the two: {both['gap']:.1e}")
    print("\nBLAS: " + "; ".join(blas_kernels()))


if __name__ == "__main__":
    main()
