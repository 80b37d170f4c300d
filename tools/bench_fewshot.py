"""Classes the encoder never saw: an index of digits 0-5, then digits 6-9 added with
``add --new-class`` from 1, 5, 10, 100 or all of their train images each.

Measured on the whole MNIST test split (no test image is stored), for an encoder trained on
0-5 only (``train --classes 0-5``) and, as the reference in the same run, the default encoder
trained on all ten:

* 1-NN accuracy of the seen digits (0-5) before and after adding, and of the unseen (6-9);
* membership claims about the new classes: each test 6-9 claimed as its class, and as many
  test images of other digits each claimed as a random new class; F1 with the class's own
  threshold (what ``check`` uses once a late class has 10 members) and with the global one;
* how often a test 6-9 claimed as a random old class (0-5) is accepted.

    python -m siamindex train --classes 0-5 --out models/fewshot/cnn-0-5.keras
    python -m siamindex train --classes 0-5 --head 128 --out models/fewshot/cnn-0-5-head.keras
    python tools/bench_fewshot.py --seen-encoder models/fewshot/cnn-0-5.keras \\
        --seen-encoder models/fewshot/cnn-0-5-head.keras \\
        --all-encoder models/robust2/cnn-seed0.keras
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import blas_kernels, markdown_table

from siamindex import metrics
from siamindex.build import BuildSettings, build_index
from siamindex.data import load_dataset
from siamindex.index import Index

SEEN, UNSEEN = list(range(6)), list(range(6, 10))
SHOTS = ["1", "5", "10", "100", "all"]


def write_seen_split(folder: Path, train_size: int | None = None) -> Path:
    """An IDX data folder of the train (and test) images of the seen digits only (of the
    first ``train_size`` train images, when given)."""
    import gzip

    def idx(path: Path, array: np.ndarray) -> None:
        header = b"\x00\x00\x08" + bytes([array.ndim])
        header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
        path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), 1))

    folder.mkdir(parents=True)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_dataset(split=split)
        if split == "train" and train_size:
            data = data.subset(slice(0, train_size))
        keep = np.isin(data.labels, SEEN)
        idx(folder / f"{prefix}-images-idx3-ubyte.gz", data.images[keep])
        idx(folder / f"{prefix}-labels-idx1-ubyte.gz", data.labels[keep])
    return folder


def copy_of(index: Index, into: Path) -> Index:
    """A private copy of an index (its bundle folder and the name pointing at it)."""
    folder = index.folder.resolve()
    shutil.copytree(folder, into / folder.name)
    (into / "idx").symlink_to(folder.name)
    return Index.open(into / "idx", embed=index.embedder)


def claim_measures(index: Index, vectors: np.ndarray, labels: np.ndarray, rng) -> dict:
    """F1 of claims about the new classes (own and global threshold), and the share of new
    digits accepted as a random old class."""
    new = np.flatnonzero(np.isin(labels, UNSEEN))
    others = rng.choice(np.flatnonzero(~np.isin(labels, UNSEEN)), len(new), replace=False)
    # half of the false claims from seen digits, half from other new digits (claimed wrongly)
    wrong_new = rng.choice(new, len(new) // 2, replace=False)
    false_rows = np.concatenate([others[: len(new) - len(wrong_new)], wrong_new])
    false_classes = np.array(
        [rng.choice([c for c in UNSEEN if c != labels[r]]) for r in false_rows]
    )
    rows = np.concatenate([new, false_rows])
    classes = np.concatenate([labels[new], false_classes])
    truth = np.concatenate([np.ones(len(new), bool), np.zeros(len(false_rows), bool)])
    results = index.check_vectors(vectors[rows], [str(c) for c in classes])
    own = np.array([r.is_member for r in results])
    support = np.array([r.support_distance for r in results])
    old = rng.choice(SEEN, len(new))
    as_old = index.check_vectors(vectors[new], [str(c) for c in old])
    return {
        "f1": metrics.classification_summary(own, truth)["f1"],
        "precision": metrics.classification_summary(own, truth)["precision"],
        "recall": metrics.classification_summary(own, truth)["recall"],
        "f1_global": metrics.classification_summary(support <= index.facts.threshold, truth)["f1"],
        "threshold_kinds": sorted({r.threshold_kind for r in results[: len(new)]}),
        "new_accepted_as_old": float(np.mean([r.is_member for r in as_old])),
        "claims": int(len(rows)),
    }


def one_nn(index: Index, vectors: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    _, ids = index.store.search(vectors, 1)
    stored = index.store.rows.labels[index.store.rows_of(ids[:, 0])]
    names = np.array(index.store.class_names)
    correct = names[stored] == labels.astype(str)
    seen = np.isin(labels, SEEN)
    return {"seen": float(correct[seen].mean()), "unseen": float(correct[~seen].mean())}


def run(
    name: str,
    encoder: str,
    data: Path,
    work: Path,
    seed: int,
    shots_list: list[str] = SHOTS,
    test_size: int | None = None,
) -> list[dict]:
    """Build the 0-5 index of ``data`` with ``encoder``, then for each number of examples add
    6-9 to a copy of it and measure on the test split (its first ``test_size`` images)."""
    train, test = load_dataset(split="train"), load_dataset(split="test")
    if test_size:
        test = test.subset(slice(0, test_size))
    started = time.perf_counter()
    index, _ = build_index(
        BuildSettings(
            encoder=encoder,
            index=work / f"{name}-base" / "idx",
            data_dir=data,
            splits=("train",),
            open_set=2000,
            progress=False,
        )
    )
    vectors = index.embed(test.images)
    before = one_nn(index, vectors, np.where(np.isin(test.labels, SEEN), test.labels, -1))
    print(f"{name}: index of 0-5 built in {time.perf_counter() - started:.0f} s", flush=True)
    out = []
    for shots in shots_list:
        rng = np.random.default_rng(seed)
        copy = copy_of(index, Path(tempfile.mkdtemp(dir=work)))
        for digit in UNSEEN:
            rows = np.flatnonzero(train.labels == digit)
            if shots != "all":
                rows = np.sort(rng.choice(rows, int(shots), replace=False))
            copy.add(train.images[rows], str(digit), new_class=True)
        found = {"encoder": name, "shots": shots, "seen_1nn_before": before["seen"]}
        found |= {f"{k}_1nn": v for k, v in one_nn(copy, vectors, test.labels).items()}
        found |= claim_measures(copy, vectors, test.labels, np.random.default_rng(seed))
        found["late_thresholds"] = {
            str(d): copy.info().class_thresholds.get(str(d)) for d in UNSEEN
        }
        print(json.dumps(found), flush=True)
        out.append(found)
    return out


def figure(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for colour, name in enumerate(dict.fromkeys(r["encoder"] for r in results)):
        mine = [r for r in results if r["encoder"] == name]
        x, style = range(len(mine)), {"color": f"C{colour}"}
        ax.plot(x, [r["f1"] for r in mine], marker="o", label=f"{name}, own threshold", **style)
        ax.plot(x, [r["f1_global"] for r in mine], ls="--", marker=".", label="global", **style)
    ax.set_xticks(range(len(SHOTS)), [f"{s}" for s in SHOTS])
    ax.set_xlabel("train examples per new class (6-9, added with add --new-class)")
    ax.set_ylabel("membership F1, new classes")
    ax.axhline(0.98, color="grey", lw=0.6)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seen-encoder", required=True, action="append", help="trained on 0-5 only (repeatable)"
    )
    parser.add_argument("--all-encoder", help="the reference trained on all ten")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("tools/figures"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        data = write_seen_split(work / "data-0-5")
        encoders = [(f"0-5 only ({Path(path).stem})", path) for path in args.seen_encoder]
        if args.all_encoder:
            encoders.append((f"0-9 ({Path(args.all_encoder).stem})", args.all_encoder))
        for name, encoder in encoders:
            results += run(name, encoder, data, work, args.seed)
    print("BLAS:", "; ".join(blas_kernels()))
    header = ["encoder", "examples per new class", "1-NN seen (before)", "1-NN unseen"]
    header += ["F1 new (own threshold)", "F1 new (global)", "new accepted as old"]
    rows = [
        [
            r["encoder"],
            r["shots"],
            f"{r['seen_1nn']:.4f} ({r['seen_1nn_before']:.4f})",
            f"{r['unseen_1nn']:.4f}",
            f"{r['f1']:.4f}",
            f"{r['f1_global']:.4f}",
            f"{r['new_accepted_as_old']:.4f}",
        ]
        for r in results
    ]
    print(markdown_table(header, rows))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_fewshot.json").write_text(json.dumps(results, indent=2) + "\n")
    figure(results, args.out / "fewshot.png")


if __name__ == "__main__":
    main()
