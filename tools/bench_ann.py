"""Approximate index types against exact (flat) search, on the same embeddings.

The stored side is the MNIST train split, the queries the 10,000 test images, all embedded once
with the given encoder. For each index type and search setting: recall@1 as ann-benchmarks
defines it (a returned neighbour counts when its distance is within the true nearest distance
plus 1e-3), queries per second (median of --repeats timed searches of all queries, one batch),
build seconds, and 1-NN label accuracy.

    python tools/bench_ann.py --encoder models/bench/cnn-seed0.keras
"""

from __future__ import annotations

import argparse

import numpy as np
from benchlib import blas_kernels, markdown_table, median_seconds, store_of

from siamindex import model
from siamindex.data import load_dataset
from siamindex.store import IndexStore

VARIANTS = [
    ("flat", {}),
    ("IVF256,Flat", {"nprobe": 1}),
    ("IVF256,Flat", {"nprobe": 4}),
    ("IVF256,Flat", {"nprobe": 16}),
    ("HNSW32", {"ef_search": 16}),
    ("HNSW32", {"ef_search": 64}),
    ("HNSW32", {"ef_search": 128}),
]
EPSILON = 1e-3


def main() -> None:
    import time

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    encoder = model.load_encoder(args.encoder)
    train, test = load_dataset(split="train"), load_dataset(split="test")
    stored, queries = model.embed(encoder, train.images), model.embed(encoder, test.images)
    built: dict[str, tuple[IndexStore, float]] = {}
    truth = None
    table = []
    for index_type, knobs in VARIANTS:
        if index_type not in built:
            started = time.perf_counter()
            built[index_type] = (store_of(stored, train.labels, index_type), 0.0)
            built[index_type] = (built[index_type][0], time.perf_counter() - started)
        store, build_seconds = built[index_type]
        distances, ids = store.search(queries, 1, **knobs)
        if truth is None:
            truth = distances[:, 0]
        recall = float(np.mean(distances[:, 0] <= truth + EPSILON))
        seconds = median_seconds(lambda s=store, k=knobs: s.search(queries, 1, **k), args.repeats)
        accuracy = float(np.mean(train.labels[np.maximum(ids[:, 0], 0)] == test.labels))
        setting = ", ".join(f"{k}={v}" for k, v in knobs.items()) or "exact"
        table.append(
            (
                index_type,
                setting,
                f"{recall:.4f}",
                f"{len(queries) / seconds:,.0f}",
                f"{build_seconds:.2f}",
                f"{accuracy:.4f}",
            )
        )
    print(
        f"{len(stored)} stored, {len(queries)} queries, {stored.shape[1]}-d; BLAS: "
        + "; ".join(blas_kernels())
        + "\n"
    )
    print(
        markdown_table(
            ("index type", "search setting", "recall@1", "queries/s", "build s", "1-NN accuracy"),
            table,
        )
    )


if __name__ == "__main__":
    main()
