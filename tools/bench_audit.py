"""Suspect labels: how well ``siamindex audit`` finds stored images whose label was flipped.

For each split and representation (the encoder's embeddings, raw pixels as the baseline), a
seeded 1% of the stored labels is flipped to a random other class; the audit's top suspects
(as many as were flipped, then twice as many) are compared with the flipped rows: precision
and recall. The test split is the honest measure (the encoder never saw those images); the
train split is what the issue asks for, but the encoder was trained on its true labels, which
flatters it. Also: where train row 7080 (a "3" among the 5s) ranks on the unflipped train split.

    python tools/bench_audit.py --encoder models/robust2/cnn-seed0.keras
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from benchlib import blas_kernels, markdown_table, store_of

from siamindex.curation import suspects
from siamindex.data import load_dataset
from siamindex.defaults import DEFAULT_SUPPORT
from siamindex.embedding import load_embedder
from siamindex.evaluation import raw_pixels

KNOWN_SUSPECT = 7080  # train row: labelled 3, drawn among the 5s (found while building)


def flip(
    labels: np.ndarray, share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(flipped labels, rows flipped): ``share`` of rows get a random other class."""
    rows = np.sort(rng.choice(len(labels), size=int(round(share * len(labels))), replace=False))
    out = labels.copy()
    out[rows] = (labels[rows] + rng.integers(1, 10, size=len(rows))) % 10
    return out, rows


def found(vectors: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Stored rows in the audit's order (ids are rows here), and the seconds it took."""
    store = store_of(np.ascontiguousarray(vectors, np.float32), labels, "flat")
    started = time.perf_counter()
    ranked = np.array([s.id for s in suspects(store, k, DEFAULT_SUPPORT)], dtype=np.int64)
    return ranked, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True)
    parser.add_argument("--share", type=float, default=0.01, help="share of labels flipped")
    parser.add_argument("-k", type=int, default=10, help="neighbours looked at")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=Path("tools/figures/bench_audit.json"))
    args = parser.parse_args()
    embed = load_embedder(args.encoder)
    rows, results = [], []
    for split in ("test", "train"):
        data = load_dataset(split=split)
        for name, represent in (("encoder", embed), ("raw pixels", raw_pixels)):
            vectors = represent(data.images)
            labels, flipped = flip(data.labels, args.share, np.random.default_rng(args.seed))
            ranked, seconds = found(vectors, labels, args.k)
            result = {"split": split, "representation": name, "stored": len(labels)}
            result |= {"flipped": len(flipped), "flagged": len(ranked), "seconds": seconds}
            for times in (1, 2):
                top = ranked[: times * len(flipped)]
                hits = np.isin(top, flipped).sum()
                result[f"precision_top_{times}x"] = float(hits / max(len(top), 1))
                result[f"recall_top_{times}x"] = float(hits / len(flipped))
            if split == "train":
                clean, _ = found(vectors, data.labels, args.k)
                where = np.flatnonzero(clean == KNOWN_SUSPECT)
                result["row_7080_rank"] = int(where[0]) + 1 if where.size else None
                result["clean_flagged"] = len(clean)
            results.append(result)
            rows.append(
                [
                    split,
                    name,
                    f"{len(labels):,}",
                    len(flipped),
                    f"{result['precision_top_1x']:.3f}",
                    f"{result['recall_top_1x']:.3f}",
                    f"{result['recall_top_2x']:.3f}",
                    result.get("row_7080_rank", "-"),
                    f"{seconds:.1f}",
                ]
            )
            print(json.dumps(result), flush=True)
    print("BLAS:", "; ".join(blas_kernels()))
    header = ["split", "vectors", "stored", "flipped", "precision@1%", "recall@1%"]
    header += ["recall@2%", "rank of train row 7080", "audit s"]
    print(markdown_table(header, rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"encoder": args.encoder, "k": args.k, "results": results}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
