"""Helpers shared by the benchmark scripts: medians of repeated timings and Markdown tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any


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
