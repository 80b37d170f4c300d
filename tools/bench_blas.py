"""Flat FAISS search under each OpenBLAS kernel: what siamindex's kernel choice is worth here.

Each row is a fresh process (OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when FAISS loads it):
siamindex imported first with nothing set (its own choice, ``siamindex.blas``), FAISS imported
alone (OpenBLAS's own detection), and each kernel forced by the variable. Every process searches
the same 10,000 queries over the same 60,000 vectors (random, 64-d: the speed does not depend on
the values) and checks its answers equal to the first row's.

    python tools/bench_blas.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchlib import markdown_table

CHILD = """
import json, sys, time
first = sys.argv[1]
if first == "siamindex":
    import siamindex  # chooses the kernel before FAISS loads
import faiss, numpy as np
from threadpoolctl import threadpool_info
rng = np.random.default_rng(0)
stored = rng.normal(size=(60_000, 64)).astype(np.float32)
queries = rng.normal(size=(10_000, 64)).astype(np.float32)
index = faiss.IndexFlatL2(64)
index.add(stored)
index.search(queries[:500], 5)
times = []
for _ in range(int(sys.argv[2])):
    started = time.perf_counter()
    _, ids = index.search(queries, 5)
    times.append(time.perf_counter() - started)
kernel = [i.get("architecture") for i in threadpool_info()
          if i.get("internal_api") == "openblas" and "faiss" in i.get("filepath", "")]
print(json.dumps({"seconds": sorted(times)[len(times) // 2], "kernel": kernel[0],
                  "checksum": int(ids[:, 0].astype(np.int64).sum())}))
"""


def run(first: str, coretype: str | None, repeats: int) -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("OPENBLAS_CORETYPE")}
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run(
        [sys.executable, "-c", CHILD, first, str(repeats)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--kernels", default="PRESCOTT,SANDYBRIDGE,HASWELL,ZEN")
    args = parser.parse_args()
    rows = [("siamindex's choice (nothing set)", run("siamindex", None, args.repeats))]
    rows.append(("OpenBLAS's own detection (FAISS alone)", run("faiss", None, args.repeats)))
    for kernel in args.kernels.split(","):
        rows.append((f"OPENBLAS_CORETYPE={kernel}", run("faiss", kernel, args.repeats)))
    base = rows[0][1]
    prescott = next((r for name, r in rows if name.endswith("PRESCOTT")), base)
    table = []
    for name, row in rows:
        if row["checksum"] != base["checksum"]:
            raise SystemExit(f"{name}: different answers from the first row")
        rate = 10_000 / float(row["seconds"])  # type: ignore[arg-type]
        table.append(
            (
                name,
                row["kernel"],
                f"{rate:,.0f}",
                f"{float(prescott['seconds']) / float(row['seconds']):.2f}x",  # type: ignore[arg-type]
            )
        )
    print(
        f"flat search, 10,000 queries over 60,000 64-d vectors, k=5, median of {args.repeats}; "
        "each row a fresh process, answers checked equal\n"
    )
    header = ("how the kernel was chosen", "kernel", "queries/s", "vs Prescott")
    print(markdown_table(header, table))


if __name__ == "__main__":
    main()
