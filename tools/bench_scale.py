"""Scale benchmark: mnist-aug:N built end to end on the local engine and on Ray, then searched
and checked.

For each size and engine, a fresh process runs `build-index --data mnist-aug:N --splits train`
(generate, embed, train the IVF quantizer, add, calibrate, write, publish) and reports its wall
time, the seconds of each phase, and the peak resident memory of every process (the building
process and each Ray worker). Then, once per size, a fresh process opens the index and measures,
on the 10,000 MNIST test images (never stored: the index holds distorted train images):

- recall@1 of the index type at --nprobe against exact search over the same stored vectors, and
  both one-batch rates (queries/s);
- membership F1 of 20,000 MNIST-test claims (each image claimed as its class and as a random
  other class, seeded) and claims/s; beside the same claims against an index of the 60,000 MNIST
  train images built in memory with the same encoder (the baseline).

    python tools/bench_scale.py --encoder models/bench/article-mlp-seed0.keras \\
        --sizes 100k,1M --engines local,ray --index-type IVF1024,Flat --nprobe 16
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import blas_kernels, markdown_table

ONE_BUILD = """
import json, os, sys, time
from siamindex.build import BuildSettings
from siamindex.scale import build
index_name, encoder, data, index_type, engine = sys.argv[1:6]
started = time.perf_counter()
index, phases = build(BuildSettings(
    encoder=encoder, index=index_name, data_dir=data, splits=("train",), index_type=index_type,
    engine=engine, progress=False, force=True))
seconds = time.perf_counter() - started
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
info = index.info()
print(json.dumps({"seconds": seconds, "phases": phases.seconds, "peak_mb": phases.peak_mb,
                  "process_peak_mb": int(hwm) / 1024, "count": info.count,
                  "size_mb": info.size_bytes / 1e6, "fingerprint": index.facts.dataset_fingerprint,
                  "threshold": index.facts.threshold}))
"""

ONE_EVAL = """
import json, sys, time
import numpy as np
from siamindex.data import load_dataset
from siamindex.index import Index
from siamindex.metrics import classification_summary
from siamindex.search import exact_search, flat_index
index_name, nprobe = sys.argv[1], int(sys.argv[2])
index = Index.open(index_name)
test = load_dataset(None, "test")
vectors = index.embed(test.images)
out = {}
if index.store.kind == "ivf":
    flat = flat_index(index.store.rows.embeddings)
    started = time.perf_counter(); _, exact = exact_search(flat, vectors, 1)
    out["exact_qps"] = len(vectors) / (time.perf_counter() - started)
    started = time.perf_counter(); _, found = index.store.search(vectors, 1, nprobe=nprobe)
    out["ivf_qps"] = len(vectors) / (time.perf_counter() - started)
    out["recall_at_1"] = float(np.mean(index.store.rows_of(found[:, 0]) == exact[:, 0]))
rng = np.random.default_rng(0)
names = index.store.class_names
wrong = (test.labels + rng.integers(1, len(names), len(test))) % len(names)
claimed = [names[i] for i in np.concatenate([test.labels, wrong])]
truth = np.concatenate([np.ones(len(test), bool), np.zeros(len(test), bool)])
both = np.concatenate([vectors, vectors])
index.check_vectors(both[:10], claimed[:10])  # per-class indexes built before the clock
started = time.perf_counter()
results = index.check_vectors(both, claimed)
out["claims_per_s"] = len(claimed) / (time.perf_counter() - started)
accepted = np.array([r.is_member for r in results])
out["membership_f1"] = classification_summary(accepted, truth)["f1"]
print(json.dumps(out))
"""

BASELINE = """
import sys
from siamindex.build import BuildSettings, build_index
build_index(BuildSettings(encoder=sys.argv[2], index=sys.argv[1], splits=("train",),
                          progress=False, open_set=0, force=True))
"""


def run_json(code: str, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=False
    )
    if done.returncode:
        sys.exit(f"failed ({' '.join(args)}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_size(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--sizes", default="100k,1M")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument("--index-type", default="IVF1024,Flat")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--out", default=None, help="Also write the results as JSON here.")
    parser.add_argument("--keep", default=None, help="Build the indexes in this folder.")
    parser.add_argument("--tables-from", default=None, help="Print the tables of a JSON result.")
    args = parser.parse_args()
    if args.tables_from:
        print_tables(json.loads(Path(args.tables_from).read_text()), args)
        return
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["SIAMINDEX_INDEXES"] = str(folder)
    results: dict = {"encoder": args.encoder, "index_type": args.index_type, "runs": []}

    run_json(BASELINE + "\nprint('{}')", str(folder / "mnist-train"), args.encoder)
    baseline = run_json(ONE_EVAL, str(folder / "mnist-train"), str(args.nprobe))
    results["baseline"] = baseline
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        for engine in args.engines.split(","):
            name = str(folder / f"aug-{size}-{engine}")
            started = time.perf_counter()
            built = run_json(
                ONE_BUILD, name, args.encoder, f"mnist-aug:{size}", args.index_type, engine
            )
            built.update(size=size, engine=engine, wall=time.perf_counter() - started)
            print(json.dumps(built), flush=True)
            results["runs"].append(built)
        evaluated = run_json(ONE_EVAL, name, str(args.nprobe))
        print(json.dumps(evaluated), flush=True)
        for run in results["runs"]:
            if run["size"] == size:
                run.update(evaluated)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, args)


def print_tables(results: dict, args: argparse.Namespace) -> None:
    rows = []
    for run in results["runs"]:
        phases = run["phases"]
        workers = [v for k, v in run["peak_mb"].items() if k.startswith("worker")]
        driver = max(v for k, v in run["peak_mb"].items() if not k.startswith("worker"))
        rows.append(
            (
                f"{run['size']:,}",
                run["engine"],
                f"{run['wall']:.0f}",
                f"{run['seconds']:.0f}",
                f"{run['size'] / run['seconds']:,.0f}",
                f"{phases.get('load (worker s)', 0):.0f}",
                f"{phases.get('embed (worker s)', 0):.0f}",
                f"{phases.get('train quantizer', 0):.1f}",
                f"{phases.get('add', 0):.0f}",
                f"{phases.get('calibrate', 0):.1f}",
                f"{driver:.0f} / {run['process_peak_mb']:.0f}",
                f"{max(workers):.0f}" if workers else "-",
                f"{run['size_mb']:.0f}",
            )
        )
    print(f"\nBuild: encoder {args.encoder}, index type {args.index_type}; seconds")
    print(
        markdown_table(
            (
                "images",
                "engine",
                "wall s",
                "build s",
                "images/s",
                "generate (worker s)",
                "embed (worker s)",
                "train",
                "add+write rows",
                "calibrate",
                "build process MB (build / with open)",
                "worker MB",
                "bundle MB",
            ),
            rows,
        )
    )
    base = results["baseline"]
    rows = [
        (
            "60,000 MNIST train (baseline, flat)",
            "-",
            "-",
            "-",
            f"{base['membership_f1']:.4f}",
            f"{base['claims_per_s']:,.0f}",
        )
    ]
    seen = set()
    for run in results["runs"]:
        if run["size"] in seen:
            continue
        seen.add(run["size"])
        rows.append(
            (
                f"{run['size']:,} mnist-aug ({args.index_type})",
                f"{run['recall_at_1']:.4f}",
                f"{run['ivf_qps']:,.0f}",
                f"{run['exact_qps']:,.0f}",
                f"{run['membership_f1']:.4f}",
                f"{run['claims_per_s']:,.0f}",
            )
        )
    print(
        f"\nSearch and membership: 10,000 MNIST test queries, nprobe {args.nprobe}; 20,000 claims"
    )
    print(
        markdown_table(
            ("index", "recall@1", "queries/s", "exact queries/s", "membership F1", "claims/s"),
            rows,
        )
    )
    print("\nBLAS: " + "; ".join(blas_kernels()) + "\n")


if __name__ == "__main__":
    main()
