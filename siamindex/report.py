"""``siamindex report``: PNG figures of an index and one self-contained HTML page.

matplotlib is an optional extra (``pip install 'siamindex[viz]'``); this module imports it only
inside ``require_matplotlib``. Every measure shown is on the dataset's test split, and no query is
ever matched against its own stored copy (rows with the same image hash are excluded).
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siamindex.defaults import ARTICLE_THRESHOLD
from siamindex.errors import DataError, MissingExtra
from siamindex.evaluation import pair_distances, true_and_false_claims
from siamindex.pairs import ARTICLE_EVAL_SAME_FRACTION, make_pairs

FIGURE_DPI = 100
SAMPLE = 2000


def require_matplotlib() -> Any:
    """Import matplotlib with a file-only backend, or say how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra(
            "Figures need matplotlib; install it with: pip install 'siamindex[viz]' "
            "(or pip install -e '.[viz]' in a checkout)."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@dataclass
class ReportData:
    """What the figures are drawn from (computed once)."""

    images: np.ndarray  # (n, 28, 28) sampled test images
    labels: np.ndarray  # (n,) their class indexes in the index
    vectors: np.ndarray  # (n, d) their embeddings
    own_rows: np.ndarray  # (n,) stored row of the same image, or -1
    class_names: tuple[str, ...]
    threshold: float
    claim_distances: np.ndarray  # (2n,) support distance of each true-or-wrong-class claim
    claim_is_member: np.ndarray  # (2n,) whether the claim is true
    claim_classes: np.ndarray  # (2n,) the class claimed


def gather(index: Any, seed: int = 0, sample: int = SAMPLE) -> ReportData:
    """Sample test images of the index's dataset and embed them.

    Raises:
        DataError: the index's source dataset has no test split here.
    """
    from siamindex.data import load_dataset

    source = index.facts.source
    test = load_dataset(None if source == "mnist" else source, "test")
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(test), size=min(sample, len(test)), replace=False))
    images = test.images[rows]
    names = index.store.class_names
    labels = np.array([names.index(test.class_names[c]) for c in test.labels[rows]])
    from siamindex.store import image_hashes

    by_hash = {h: r for r, h in enumerate(index.store.rows.image_sha256)}
    own = np.array([by_hash.get(h, -1) for h in image_hashes(images)], dtype=np.int64)
    vectors = index.embed(images)
    claims = true_and_false_claims(labels, np.random.default_rng(seed + 1))
    _, _, distances = index.partition.nearest(
        vectors[claims.rows],
        claims.classes,
        exclude_rows=own[claims.rows],
        support=index.facts.support,
    )
    return ReportData(
        images,
        labels,
        vectors,
        own,
        names,
        index.facts.threshold,
        distances,
        claims.is_member,
        claims.classes,
    )


# -- figures -------------------------------------------------------------------------------


def figure_pairs(plt: Any, index: Any, data: ReportData, seed: int) -> Any:
    """The article's figure: 16 random test pairs, their distance and verdict."""
    pairs = make_pairs(
        data.labels, "article", np.random.default_rng(seed), ARTICLE_EVAL_SAME_FRACTION
    )
    pick = np.random.default_rng(seed + 2).choice(len(pairs), 16, replace=False)
    distances = pair_distances(data.vectors, pairs.left[pick], pairs.right[pick])
    figure, axes = plt.subplots(4, 8, figsize=(12, 7))
    for i in range(16):
        left, right = axes[i // 4, 2 * (i % 4)], axes[i // 4, 2 * (i % 4) + 1]
        left.imshow(data.images[pairs.left[pick[i]]], cmap="gray")
        right.imshow(data.images[pairs.right[pick[i]]], cmap="gray")
        same = distances[i] < ARTICLE_THRESHOLD
        wrong = same != bool(pairs.is_same[pick[i]])
        verdict = ("same" if same else "different") + ("  WRONG" if wrong else "")
        left.set_title(
            f"d={distances[i]:.2f} {verdict}",
            fontsize=9,
            loc="left",
            color="red" if wrong else "black",
        )
        for axis in (left, right):
            axis.set_xticks([])
            axis.set_yticks([])
            if wrong:
                for spine in axis.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(3)
    figure.suptitle(
        f'16 random test pairs; "same" when distance < {ARTICLE_THRESHOLD} (the article\'s rule)'
    )
    return figure


def figure_histograms(plt: Any, index: Any, data: ReportData, seed: int) -> Any:
    """Distances of same/different pairs, and of true/false membership claims with the threshold."""
    pairs = make_pairs(
        data.labels, "article", np.random.default_rng(seed), ARTICLE_EVAL_SAME_FRACTION
    )
    distances = pair_distances(data.vectors, pairs.left, pairs.right)
    same = pairs.is_same == 1
    claim_distances, member = data.claim_distances, data.claim_is_member
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    bins = np.linspace(0, np.percentile(distances, 99.5), 60)
    left.hist(distances[same], bins=bins, alpha=0.7, label="same class")
    left.hist(distances[~same], bins=bins, alpha=0.7, label="different class")
    left.axvline(
        ARTICLE_THRESHOLD, color="black", linestyle="--", label=f"article's {ARTICLE_THRESHOLD}"
    )
    left.set(title="Pair distances (test pairs)", xlabel="Euclidean distance", ylabel="pairs")
    # Fixed legend places: matplotlib's "best" warns when it is slow, and the CLI stops on
    # unexpected warnings (under load that made `report` fail now and then).
    left.legend(loc="upper right")
    finite = claim_distances[np.isfinite(claim_distances)]
    bins = np.linspace(0, np.percentile(finite, 99.5), 60)
    right.hist(claim_distances[member], bins=bins, alpha=0.7, label="true claims")
    right.hist(claim_distances[~member], bins=bins, alpha=0.7, label="false claims")
    right.axvline(
        data.threshold,
        color="black",
        linestyle="--",
        label=f"calibrated threshold {data.threshold:.3f}",
    )
    right.set(
        title=f"Membership claims: distance to the nearest {index.facts.support} stored members",
        xlabel="Euclidean distance",
        ylabel="claims",
    )
    right.legend(loc="upper right")
    return figure


def figure_roc(plt: Any, index: Any, data: ReportData, seed: int) -> Any:
    """ROC of membership claims with its AUC; precision and recall against the threshold."""
    from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

    distances, member = data.claim_distances, data.claim_is_member
    scores = -np.where(np.isfinite(distances), distances, 1e9)
    fpr, tpr, roc_thresholds = roc_curve(member, scores)
    auc = roc_auc_score(member, scores)
    precision, recall, thresholds = precision_recall_curve(member, scores)
    chosen = distances <= data.threshold
    point_fpr = np.mean(chosen[~member])
    point_tpr = np.mean(chosen[member])
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(fpr, tpr)
    left.plot([point_fpr], [point_tpr], "o", color="red", label=f"threshold {data.threshold:.3f}")
    left.set(
        title=f"ROC of membership claims (AUC {auc:.4f})",
        xlabel="false positive rate",
        ylabel="true positive rate",
    )
    left.legend(loc="lower right")
    right.plot(-thresholds, precision[:-1], label="precision")
    right.plot(-thresholds, recall[:-1], label="recall")
    right.axvline(data.threshold, color="red", linestyle="--", label="chosen threshold")
    right.set(
        title="Precision and recall against the threshold",
        xlabel="threshold (Euclidean)",
        xlim=(0, float(np.percentile(distances[np.isfinite(distances)], 95))),
    )
    right.legend(loc="center right")
    return figure


def figure_gallery(
    plt: Any, index: Any, data: ReportData, seed: int, queries: int = 8, k: int = 6
) -> Any:
    """Random test queries beside their k nearest stored images; wrong-class matches in red."""
    pick = np.random.default_rng(seed + 3).choice(len(data.images), queries, replace=False)
    distances, ids = index.store.search(data.vectors[pick], k + 1)
    figure, axes = plt.subplots(queries, k + 1, figsize=(1.6 * (k + 1), 1.8 * queries))
    for q, row in enumerate(pick):
        found = [
            (d, i)
            for d, i in zip(distances[q], ids[q], strict=True)
            if i >= 0 and index.store.rows_of(np.array([i]))[0] != data.own_rows[row]
        ][:k]
        axes[q, 0].imshow(data.images[row], cmap="gray")
        axes[q, 0].set_title(f"query ({data.class_names[data.labels[row]]})", fontsize=8)
        stored_rows = index.store.rows_of(np.array([i for _, i in found], dtype=np.int64))
        pictures = index.stored_images(stored_rows)
        for j, ((distance, _), stored_row, picture) in enumerate(
            zip(found, stored_rows, pictures, strict=True), start=1
        ):
            label = data.class_names[index.store.rows.labels[stored_row]]
            miss = label != data.class_names[data.labels[row]]
            if picture is not None:
                axes[q, j].imshow(picture, cmap="gray")
            axes[q, j].set_title(
                f"{label} d={distance:.2f}", fontsize=8, color="red" if miss else "black"
            )
            if miss:
                for spine in axes[q, j].spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(3)
        for axis in axes[q]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.suptitle("Nearest stored images of random test queries (misses in red)")
    return figure


def figure_projection(plt: Any, index: Any, data: ReportData, seed: int) -> Any:
    """2-D maps of the embeddings coloured by class: PCA, and t-SNE of a subsample."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 6))
    pca = PCA(n_components=2, random_state=seed).fit_transform(data.vectors)
    subset = np.random.default_rng(seed).choice(
        len(data.vectors), min(1000, len(data.vectors)), replace=False
    )
    tsne = TSNE(n_components=2, random_state=seed, init="pca", perplexity=30).fit_transform(
        data.vectors[subset]
    )
    for axis, points, labels, title in (
        (left, pca, data.labels, "PCA"),
        (right, tsne, data.labels[subset], "t-SNE (1,000 points)"),
    ):
        scatter = axis.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4)
        axis.set(title=f"{title} of test embeddings", xticks=[], yticks=[])
    handles = scatter.legend_elements()[0]
    right.legend(
        handles,
        [data.class_names[c] for c in np.unique(data.labels)],
        title="class",
        loc="center left",
        bbox_to_anchor=(1, 0.5),
    )
    return figure


def figure_membership(plt: Any, index: Any, data: ReportData, seed: int) -> Any:
    """Per-class F1 of membership claims, and how often a claim of class j about an image of
    class i is accepted (diagonal: recall; off the diagonal: false acceptances)."""
    from siamindex import metrics

    distances, member, classes = data.claim_distances, data.claim_is_member, data.claim_classes
    accepted = distances <= data.threshold
    present = np.unique(data.labels)
    f1 = [
        metrics.classification_summary(accepted[classes == c], member[classes == c])["f1"]
        for c in present
    ]
    every = np.repeat(np.arange(len(data.labels)), len(present))
    claimed = np.tile(present, len(data.labels))
    _, _, all_distances = index.partition.nearest(
        data.vectors[every], claimed, exclude_rows=data.own_rows[every], support=index.facts.support
    )
    rates = np.zeros((len(present), len(present)))
    for i, true in enumerate(present):
        for j, group in enumerate(present):
            chosen = (data.labels[every] == true) & (claimed == group)
            rates[i, j] = np.mean(all_distances[chosen] <= data.threshold)
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    names = [data.class_names[c] for c in present]
    left.bar(names, f1)
    left.set(
        title="Membership F1 per claimed class",
        ylim=(min(0.9, min(f1) - 0.01), 1.0),
        xlabel="class",
    )
    image = right.imshow(rates, cmap="viridis", vmin=0, vmax=1)
    right.set(
        title="Share of claims accepted",
        xlabel="claimed class",
        ylabel="true class",
        xticks=range(len(names)),
        yticks=range(len(names)),
        xticklabels=names,
        yticklabels=names,
    )
    for i in range(len(names)):
        for j in range(len(names)):
            right.text(
                j,
                i,
                f"{rates[i, j]:.2f}" if rates[i, j] >= 0.005 else "",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if rates[i, j] < 0.5 else "black",
            )
    figure.colorbar(image, ax=right)
    return figure


def figure_training(plt: Any, index: Any, data: ReportData, seed: int) -> Any | None:
    """Training and validation curves from the encoder's training report, if the bundle has it."""
    report = index.training_report()
    if not report:
        return None
    history = report.get("history", {})
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, values in history.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", label=name)
    axis.set(
        title=f"Training ({report.get('settings', {}).get('encoder', '?')} encoder)",
        xlabel="epoch",
        ylabel="loss",
    )
    axis.legend(loc="upper right")
    return figure


FIGURES: list[tuple[str, str, Callable[..., Any]]] = [
    ("pairs.png", "16 random test pairs", figure_pairs),
    ("distances.png", "Distance histograms", figure_histograms),
    ("roc.png", "ROC and precision/recall", figure_roc),
    ("gallery.png", "Nearest-neighbour gallery", figure_gallery),
    ("projection.png", "2-D projection of the embeddings", figure_projection),
    ("membership.png", "Membership checks per class", figure_membership),
    ("training.png", "Training curves", figure_training),
]


def write_report(index: Any, out_dir: str | os.PathLike[str], seed: int = 0) -> list[Path]:
    """Write every figure as PNG and ``report.html`` (figures embedded) into ``out_dir``.

    Returns:
        The files written, the HTML page last.

    Raises:
        MissingExtra: matplotlib is not installed.
        DataError: the index's dataset cannot be read here.
    """
    plt = require_matplotlib()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = gather(index, seed)
    written: list[Path] = []
    sections = []
    for name, title, draw in FIGURES:
        figure = draw(plt, index, data, seed)
        if figure is None:
            continue
        figure.tight_layout()
        path = out / name
        figure.savefig(path, dpi=FIGURE_DPI)
        plt.close(figure)
        written.append(path)
        encoded = base64.b64encode(path.read_bytes()).decode()
        sections.append(
            f'<h2>{html.escape(title)}</h2>\n<img alt="{html.escape(title)}" '
            f'src="data:image/png;base64,{encoded}">'
        )
    info = index.info().to_dict()
    page = out / "report.html"
    page.write_text(
        _PAGE.format(
            name=html.escape(info["name"]),
            facts=html.escape(
                json.dumps(
                    {
                        k: info[k]
                        for k in ("count", "embedding_dim", "index_type", "threshold", "created")
                    },
                    indent=1,
                )
            ),
            sections="\n".join(sections),
        )
    )
    written.append(page)
    return written


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>siamindex report: {name}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto}}img{{max-width:100%}}
pre{{background:#f4f4f4;padding:1em}}</style></head>
<body><h1>siamindex report: {name}</h1><pre>{facts}</pre>
{sections}
</body></html>
"""


def write_query_figure(
    index: Any,
    images: np.ndarray,
    names: list[str],
    results: list[Any],
    path: str | os.PathLike[str],
) -> Path:
    """Each query image beside its matches, with labels and distances (``query --show``)."""
    plt = require_matplotlib()
    if not results:
        raise DataError("No query results to show.")
    k = max(len(r.matches) for r in results)
    rows = min(len(results), 20)
    figure, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 1.8 * rows), squeeze=False)
    for q in range(rows):
        axes[q, 0].imshow(images[q], cmap="gray")
        axes[q, 0].set_title(
            f"{names[q][-18:]}\n-> {results[q].predicted or 'no match'}", fontsize=7
        )
        ids = np.array([m.id for m in results[q].matches], dtype=np.int64)
        pictures = index.stored_images(index.store.rows_of(ids))
        for j, (match, picture) in enumerate(
            zip(results[q].matches, pictures, strict=True), start=1
        ):
            if picture is not None:
                axes[q, j].imshow(picture, cmap="gray")
            axes[q, j].set_title(f"{match.class_name} d={match.distance:.2f}", fontsize=7)
        for axis in axes[q]:
            axis.set_xticks([])
            axis.set_yticks([])
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    return path
