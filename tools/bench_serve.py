"""``siamindex serve`` under load, on 127.0.0.1 only, beside the warm in-process rate.

A copy of an index (default ``indexes/mnist-train``) is served by a real ``siamindex serve``
process. Load comes from ``wrk`` (Debian's package) with a Lua script that sends single-image
queries (PNG of a test digit, base64) and stops each run at a fixed request count or time limit,
whichever comes first; nothing leaves the machine.

* 1, 8 and 32 concurrent clients: requests/s and p50/p95/p99 latency, for each ``serve
  --workers`` count given (default 1 and 2, in the same run).
* With the last workers count: one batch ``check`` of 20,000 claims (each test image with its
  true and a wrong class), as dataset refs and as PNG images, beside ``Index.check`` warm in
  this process on the same claims.
* The 8-client load again while 10 changes are published (4 adds, 4 removes, 2 rebuilds):
  failed requests, and the generations the server went through.

    python tools/bench_serve.py --index mnist-train
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from benchlib import blas_kernels, markdown_table
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
from serving import running_server  # noqa: E402

from siamindex.build import BuildSettings, build_index  # noqa: E402
from siamindex.data import load_dataset  # noqa: E402
from siamindex.evaluation import true_and_false_claims  # noqa: E402
from siamindex.index import Index  # noqa: E402

LUA = """
local bodies = {BODIES}
local limit = {LIMIT}
local count = 0
request = function()
  count = count + 1
  return wrk.format("POST", "{PATH}", {["Content-Type"] = "application/json"},
                    bodies[(count % #bodies) + 1])
end
response = function(status, headers, body)
  if count >= limit then wrk.thread:stop() end
end
done = function(summary, latency, requests)
  io.write(string.format(
    '\\nRESULT {"requests": %d, "seconds": %.4f, "p50": %.3f, "p95": %.3f, "p99": %.3f, ' ..
    '"status_errors": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(95) / 1000, latency:percentile(99) / 1000, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def wrk(base: str, path: str, bodies: list[str], clients: int, seconds: float, limit: int) -> dict:
    """One bounded wrk run: at most ``limit`` requests per thread and ``seconds`` long."""
    threads = min(clients, 2)
    lua = (
        LUA.replace("{BODIES}", "{" + ",".join(json.dumps(b) for b in bodies) + "}")
        .replace("{LIMIT}", str(max(1, limit // threads)))
        .replace("{PATH}", path)
    )
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    try:
        done = subprocess.run(
            ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s",
             "--timeout", "10s", "-s", script.name, base],
            capture_output=True, text=True, check=True, timeout=seconds + 60,
        )  # fmt: skip
    finally:
        os.unlink(script.name)
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["rate"] = result["requests"] / result["seconds"]
    return result


def query_loads(base: str, path: str, bodies: list[str], args, workers: int) -> list[list]:  # type: ignore[no-untyped-def]
    """Single-image queries from 1, 8 and 32 clients: one table row each."""
    rows = []
    for clients in (1, 8, 32):
        got = wrk(base, path, bodies, clients, args.seconds, args.requests)
        failed = got["status_errors"] + got["socket_errors"]
        latency = [f"{got[p]:.1f}" for p in ("p50", "p95", "p99")]
        rows.append([workers, clients, f"{got['rate']:,.0f}", *latency, got["requests"], failed])
    return rows


def in_process_single_rate(index: Index, images: np.ndarray, seconds: float) -> float:
    """Single-image queries one after another in this process, warm (the baseline)."""
    index.query(images[:1], k=5)
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        index.query(images[done % len(images) : done % len(images) + 1], k=5)
        done += 1
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", default="mnist-train")
    parser.add_argument("--seconds", type=float, default=10.0, help="time limit of each load run")
    parser.add_argument("--requests", type=int, default=30_000, help="request limit of each run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--workers", default="1,2", help="serve --workers counts to load, side by side"
    )
    parser.add_argument(
        "--index-type",
        default="flat",
        help="serve a rebuild of the index with this FAISS type (e.g. HNSW32) instead of a copy",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench_serve needs wrk: apt-get install wrk")

    test = load_dataset(split="test")
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    original = Index.open(args.index)
    source = original.folder
    path = work / "served"
    if args.index_type == "flat":
        shutil.copytree(source, work / source.name)
        (work / "served").symlink_to(source.name)
    else:  # the same encoder and images, another FAISS index type
        build_index(BuildSettings(encoder=source / "encoder.keras", index=path,
                                  splits=original.facts.splits, index_type=args.index_type,
                                  progress=False))  # fmt: skip
    index = Index.open(path)
    token = "bench-" + os.urandom(12).hex()
    (work / "token").write_text(token)

    rng = np.random.default_rng(0)
    claims = true_and_false_claims(test.labels, rng)
    classes = [index.store.class_names[c] for c in claims.classes]
    images = test.images[claims.rows]
    index.check(images[:2048], classes[:2048])  # warm: every batch shape traced once
    in_process = statistics.median(
        len(images) / _timed(lambda: index.check(images, classes)) for _ in range(args.repeats)
    )
    single = in_process_single_rate(index, test.images, min(args.seconds, 5.0))

    bodies = [
        json.dumps({"images": [{"png": png_b64(test.images[i])}], "k": 5}) for i in range(200)
    ]
    query_path = "/v1/indexes/served/query"
    rows, swap_row = [], None
    counts = [int(n) for n in args.workers.split(",")]
    for workers in counts[:-1]:  # the query load alone; the last count does everything
        with running_server(path, "--workers", str(workers)) as (_, base):
            rows += query_loads(base, query_path, bodies, args, workers)
    extra = ("--token-file", str(work / "token"), "--workers", str(counts[-1]))
    with running_server(path, *extra) as (_, base):
        rows += query_loads(base, query_path, bodies, args, counts[-1])
        check_rows = []
        for kind in ("ref", "png"):
            specs = (
                [{"ref": f"mnist:test:{r}"} for r in claims.rows]
                if kind == "ref"
                else [{"png": png_b64(test.images[r])} for r in claims.rows]
            )
            body = json.dumps(
                {"claims": [{"image": s, "class": c} for s, c in zip(specs, classes, strict=True)]}
            )
            seconds = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                reply = httpx.post(
                    f"{base}/v1/indexes/served/check", content=body,
                    headers={"content-type": "application/json"}, timeout=120,
                )  # fmt: skip
                seconds.append(time.perf_counter() - started)
                assert reply.status_code == 200, reply.text[:300]
            rate = len(specs) / statistics.median(seconds)
            check_rows.append([kind, f"{len(body) / 2**20:.1f}", f"{rate:,.0f}",
                               f"{rate / in_process:.2f}"])  # fmt: skip

        generations = []
        stop = threading.Event()

        def publish() -> None:
            writer = Index.open(path)
            for step in range(10):
                if step in (4, 9):
                    splits = ("test",) if step == 4 else ("train",)
                    build_index(BuildSettings(encoder=writer.folder / "encoder.keras", index=path,
                                              splits=splits, force=True, progress=False,
                                              index_type=args.index_type))  # fmt: skip
                    writer = Index.open(path)
                elif step % 2 == 0:
                    writer.add(test.images[step : step + 1], "7")
                else:
                    writer.remove([int(writer.store.rows.ids[-1])])
                time.sleep(0.5)
                generations.append(httpx.get(f"{base}/readyz", timeout=10).status_code)
            stop.set()

        publisher = threading.Thread(target=publish)
        started = time.perf_counter()
        publisher.start()
        total = {"requests": 0, "failed": 0, "runs": 0}
        while not stop.is_set():
            got = wrk(base, query_path, bodies, 8, 5.0, args.requests)
            total["requests"] += got["requests"]
            total["failed"] += got["status_errors"] + got["socket_errors"]
            total["runs"] += 1
        publisher.join()
        final = httpx.get(f"{base}/readyz", timeout=10).json()["result"]["generations"]["served"]
        swap_row = [10, f"{time.perf_counter() - started:.0f}", total["requests"],
                    total["failed"], final]  # fmt: skip

    print(f"BLAS: {'; '.join(blas_kernels()) or 'none loaded'}")
    print(f"index: {args.index} ({len(index.store.rows):,} images, {args.index_type}), "
          f"CPU cores: {os.cpu_count()}")  # fmt: skip
    print(f"\nwarm in process: {single:,.0f} single-image queries/s one after another, "
          f"{in_process:,.0f} claims/s (Index.check of 20,000)\n")  # fmt: skip
    print(markdown_table(["workers", "clients", "queries/s", "p50 ms", "p95 ms", "p99 ms",
                          "requests", "failed"], rows))  # fmt: skip
    print()
    print(markdown_table(["check of 20,000 claims, images as", "body MB", "claims/s",
                          "vs in-process"], check_rows))  # fmt: skip
    print()
    print(markdown_table(["changes published", "seconds", "requests meanwhile", "failed",
                          "final generation"], [swap_row]))  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


def _timed(run) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
