"""Helpers shared by the benchmark scripts: medians of repeated timings and Markdown tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def median_seconds(run: Callable[[], Any], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``run()`` over ``repeats`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (what the README carries)."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def blas_kernels() -> list[str]:
    """FAISS's OpenBLAS kernel and who chose it (``siamindex.blas``), then any other OpenBLAS
    loaded (numpy's), each with the kernel it picked."""
    from siamindex import blas

    others = [
        f"{lib['library']} {lib['version']} ({lib['kernel']}, {lib['threads']} threads)"
        for lib in blas.loaded_kernels()
        if not lib["library"].startswith("faiss")
    ]
    return [blas.summary(blas.report()), *others]


def store_of(vectors: np.ndarray, labels: np.ndarray, index_type: str) -> Any:
    """An in-memory ``IndexStore`` of ``index_type`` over the vectors, ids 0..n-1, classes "0"..
    (threshold unused: the benchmarks that use it measure search, not verdicts)."""
    from siamindex.facts import IndexFacts
    from siamindex.store import IndexStore, Rows, build_faiss_index

    n = len(vectors)
    ids = np.arange(n, dtype=np.int64)
    rows = Rows(ids, labels.astype(np.int64), np.full(n, "train"), ids, np.full(n, ""), vectors)
    facts = IndexFacts(embedding_dim=vectors.shape[1], threshold=0.0, index_type=index_type)
    index = build_faiss_index(vectors, ids, index_type, seed=0)
    names = tuple(str(c) for c in range(int(labels.max()) + 1))
    return IndexStore(index, rows, names, np.full(len(names), np.nan), facts)
