"""build-index benchmark: seconds and peak memory of each phase over all 70,000 MNIST images.

Each run is a fresh process that builds a new index with a given encoder (nothing is trained),
as `siamindex build-index --encoder PATH` does, so loading the data and the encoder is counted.
The table gives the median of --repeats runs, and the wall time of the whole CLI command
(interpreter and TensorFlow start-up included) measured the same way.

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
    print("\nBLAS: " + "; ".join(blas_kernels()))


if __name__ == "__main__":
    main()
