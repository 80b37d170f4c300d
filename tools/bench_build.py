"""build-index benchmark: seconds and peak memory of each phase over all 70,000 MNIST images.

Each run builds a fresh index with a given encoder (nothing is trained) in a temporary folder,
as `siamindex build-index --encoder PATH` does; the table gives the median of --repeats runs.

    python tools/bench_build.py --encoder models/bench/cnn-seed0.keras --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from benchlib import markdown_table

from siamindex.index import Index

PHASES = ("load", "embed", "add", "calibrate", "write")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {phase: [] for phase in PHASES}
    peaks: dict[str, list[float]] = {phase: [] for phase in PHASES}
    totals = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            index = Index.build(Path(folder) / "mnist", encoder=args.encoder, progress=False)
            for phase in PHASES:
                seconds[phase].append(index.build_phases.seconds[phase])
                peaks[phase].append(index.build_phases.peak_mb.get(phase, float("nan")))
            totals.append(sum(index.build_phases.seconds.values()))
            count = index.info()["count"]
    rows = [
        (phase, f"{statistics.median(seconds[phase]):.2f}", f"{max(peaks[phase]):.0f}")
        for phase in PHASES
    ]
    rows.append(
        (
            "**total**",
            f"**{statistics.median(totals):.2f}**",
            f"{max(max(p) for p in peaks.values()):.0f}",
        )
    )
    print(f"build-index over {count} images, median of {args.repeats} runs\n")
    print(markdown_table(("phase", "seconds", "peak RSS MB"), rows))


if __name__ == "__main__":
    main()
