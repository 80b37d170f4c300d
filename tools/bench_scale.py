"""Scale benchmark: mnist-aug:N built end to end on the local engine and on Ray, then searched
and checked.

For each size and engine, a fresh process runs `build-index --data mnist-aug:N --splits train`
(generate, embed, train the IVF quantizer, add, calibrate, write, publish) and reports its wall
time, the seconds of each phase, and the peak resident memory of every process (the building
process and each Ray worker). Then, once per size, a fresh process opens the index and measures,
on the 10,000 MNIST test images (never stored: the index holds distorted train images):

- recall@1 of the index type at each --nprobe against exact search over the same stored vectors, and
  both one-batch rates (queries/s);
- membership F1 of 20,000 MNIST-test claims (each image claimed as its class and as a random
  other class, seeded) and claims/s; beside the same claims against an index of the 60,000 MNIST
  train images built in memory with the same encoder (the baseline).

    python tools/bench_scale.py --encoder models/bench/article-mlp-seed0.keras \\
        --sizes 100k,1M --engines local,ray --nprobe 8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import blas_kernels, markdown_table

from siamindex.defaults import DEFAULT_CLASS_EF, DEFAULT_CLASS_NPROBE, SELECTOR_FROM

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
index_name = sys.argv[1]
index = Index.open(index_name)
knob = {"ivf": "nprobe", "hnsw": "ef_search"}.get(index.store.kind)
settings = [int(n) for n in sys.argv[2 if knob == "nprobe" else 3].split(",")]
test = load_dataset(None, "test")
vectors = index.embed(test.images)
out = {}
if knob is not None:
    flat = flat_index(index.store.rows.embeddings)
    started = time.perf_counter(); _, exact = exact_search(flat, vectors, 1)
    out["exact_qps"] = len(vectors) / (time.perf_counter() - started)
    out["approximate"] = {}
    for setting in settings:
        started = time.perf_counter()
        _, found = index.store.search(vectors, 1, **{knob: setting})
        qps = len(vectors) / (time.perf_counter() - started)
        recall = float(np.mean(index.store.rows_of(found[:, 0]) == exact[:, 0]))
        # Ties: an encoder may map different images to the same vector (the article's MLP
        # does, often), and then any of them is the nearest; count an answer as exact nearest
        # when it is as near as exact search's (within 1e-4, relative).
        stored = index.store.rows.embeddings
        exact_d = np.linalg.norm(vectors - stored[exact[:, 0]], axis=1)
        found_d = np.linalg.norm(vectors - stored[index.store.rows_of(found[:, 0])], axis=1)
        as_near = float(np.mean(found_d <= exact_d * (1 + 1e-4) + 1e-6))
        out["approximate"][f"{knob} {setting}"] = {
            "qps": qps, "recall_at_1": recall, "as_near": as_near
        }
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


def type_for(size: int, index_type: str) -> str:
    if index_type != "auto":
        return index_type
    return f"IVF{2 ** round(math.log2(4 * math.sqrt(size)))},Flat"


def parse_size(text: str) -> int:
    units = {"k": 1_000, "m": 1_000_000}
    text = text.strip().lower()
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default=None, help="Required unless --tables-from.")
    parser.add_argument("--sizes", default="100k,1M")
    parser.add_argument("--engines", default="local,ray")
    parser.add_argument(
        "--index-type",
        default="auto",
        help="FAISS types separated by ';' (each built and measured in turn), or auto: "
        "IVF<L>,Flat with L the power of 2 nearest 4 sqrt(N) (FAISS's guideline: 1,024 lists at "
        "100k, 4,096 at 1M).",
    )
    parser.add_argument("--nprobe", default="8,16,32,64", help="IVF lists visited, each measured.")
    parser.add_argument("--ef-search", default="16,32,64", help="HNSW breadths, each measured.")
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
    baseline = run_json(ONE_EVAL, str(folder / "mnist-train"), args.nprobe, args.ef_search)
    results["baseline"] = baseline
    for size in [parse_size(s) for s in args.sizes.split(",")]:
        for index_type in [type_for(size, t) for t in args.index_type.split(";")]:
            slug = "".join(c if c.isalnum() else "-" for c in index_type)
            for engine in args.engines.split(","):
                name = str(folder / f"aug-{size}-{slug}-{engine}")
                started = time.perf_counter()
                data = f"mnist-aug:{size}"
                built = run_json(ONE_BUILD, name, args.encoder, data, index_type, engine)
                wall = time.perf_counter() - started
                built.update(size=size, engine=engine, wall=wall, index_type=index_type)
                print(json.dumps(built), flush=True)
                results["runs"].append(built)
            evaluated = run_json(ONE_EVAL, name, args.nprobe, args.ef_search)
            print(json.dumps(evaluated), flush=True)
            for run in results["runs"]:
                if (run["size"], run["index_type"]) == (size, index_type):
                    run.update(evaluated)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, args)


def print_tables(results: dict, args: argparse.Namespace) -> None:
    rows = []
    for run in results["runs"]:
        phases = run["phases"]
        workers = [v for k, v in run["peak_mb"].items() if k.startswith("worker")]
        # Phases reset the peak as each starts (Linux's clear_refs): the process's peak is the
        # largest of theirs and of the last reading (which also covers opening the new index).
        driver = max(
            [v for k, v in run["peak_mb"].items() if not k.startswith("worker")]
            + [run["process_peak_mb"]]
        )
        rows.append(
            (
                f"{run['size']:,}",
                run.get("index_type", results["index_type"]),
                run["engine"],
                f"{run['wall']:.0f}",
                f"{run['seconds']:.0f}",
                f"{run['size'] / run['seconds']:,.0f}",
                f"{phases.get('load (worker s)', 0):.0f}",
                f"{phases.get('embed (worker s)', 0):.0f}",
                f"{phases.get('train quantizer', 0):.1f}",
                f"{phases.get('add', 0):.0f}",
                f"{phases.get('calibrate', 0):.1f}",
                f"{driver:.0f}",
                f"{max(workers):.0f}" if workers else "-",
                f"{run['size_mb']:.0f}",
            )
        )
    print(f"\nBuild: encoder {results['encoder']}; seconds")
    print(
        markdown_table(
            (
                "images",
                "index type",
                "engine",
                "wall s",
                "build s",
                "images/s",
                "generate (worker s)",
                "embed (worker s)",
                "train",
                "add+write rows",
                "calibrate",
                "build process peak MB",
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
        index_type = run.get("index_type", results["index_type"])
        if (run["size"], index_type) in seen:
            continue
        seen.add((run["size"], index_type))
        # Results of older runs name IVF settings by nprobe alone.
        settings = run.get("approximate") or {f"nprobe {n}": v for n, v in run["ivf"].items()}
        for setting, ivf in settings.items():
            rows.append(
                (
                    f"{run['size']:,} mnist-aug ({index_type})",
                    f"{setting}: {ivf['recall_at_1']:.4f} / {ivf['as_near']:.4f}",
                    f"{ivf['qps']:,.0f} ({ivf['qps'] / run['exact_qps']:.1f}x)",
                    f"{run['exact_qps']:,.0f}",
                    f"{run['membership_f1']:.4f}",
                    f"{run['claims_per_s']:,.0f}",
                )
            )
    print(
        "\nSearch and membership: 10,000 MNIST test queries (recall@1 against exact search over "
        "the same vectors); 20,000 MNIST test claims (class-restricted search: per-class copies "
        f"below {SELECTOR_FROM:,} rows, the index with a class selector at nprobe "
        f"{DEFAULT_CLASS_NPROBE} from there; HNSW types: the bundle's graph per class at "
        f"ef_search {DEFAULT_CLASS_EF})"
    )
    print(
        markdown_table(
            (
                "index",
                "recall@1 (same id / as near)",
                "queries/s",
                "exact queries/s",
                "membership F1",
                "claims/s",
            ),
            rows,
        )
    )
    print("\nBLAS: " + "; ".join(blas_kernels()) + "\n")


if __name__ == "__main__":
    main()
