"""The build pipeline: a dataset and an encoder in, a calibrated, verified bundle out.

``build_index(BuildSettings(...))`` loads the dataset, embeds it, fills a FAISS index, calibrates
the membership and pair thresholds, and publishes the bundle atomically. It never trains: give it
an encoder file (the CLI trains one first when ``build-index`` gets none).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from siamindex import augmented, bundle
from siamindex.data import SPLITS, Dataset, load_dataset, sha256_file
from siamindex.defaults import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_INDEX,
    DEFAULT_MIN_RECALL,
    DEFAULT_OPEN_SET,
    DEFAULT_RULE,
    DEFAULT_SUPPORT,
    RULES,
)
from siamindex.embedding import Embedder, embed_in_chunks, load_embedder
from siamindex.errors import DataError, IndexExists
from siamindex.evaluation import Calibration, calibrate, calibrate_pairs
from siamindex.facts import IndexFacts
from siamindex.index import Index
from siamindex.store import IndexStore, Rows, build_faiss_index, image_hashes, new_faiss_index

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuildSettings:
    """What to build.

    Attributes:
        encoder: the ``.keras`` encoder file the vectors come from.
        index: index name (under ``./indexes`` or ``$SIAMINDEX_INDEXES``) or path.
        data_dir: dataset folder; None for the bundled MNIST.
        splits: which splits to index.
        index_type: "flat" or a FAISS index_factory string.
        batch_size: images per encoder call.
        force: replace an existing index (only once the new one is complete).
        target_precision: calibrate to the largest threshold reaching this precision instead
            of max F1 and the recall floor; where no threshold reaches it, a warning is logged
            and max F1 (with the floor) decides, as the recorded method says.
        resize: resize class-folder images that are not 28x28.
        seed: drives sampling for FAISS training and calibration.
        support: a membership claim holds when this many stored members of the class lie
            within the threshold (1: the nearest member alone decides).
        rule: "nearest-class" (and no other class has as many members nearer) or "distance";
            see ``defaults.DEFAULT_RULE``.
        progress: show progress bars.
        open_set: how many generated non-digits (``siamindex.exposure``, seeded apart from
            training's) join the calibration as false claims; None: 2,000 for the bundled
            MNIST and mnist-aug, none for other datasets (whose classes may be letters or
            shapes).
        min_recall: the threshold accepts at least this share of true claims (leave-one-out);
            None or 0: no floor.
        engine: "local" or "ray": where shards are embedded (``scale.build``; this module's
            ``build_index`` is the local engine's in-memory road).
        address: the Ray cluster to join (None: start a local one).
        workers: Ray actors that embed (None: one per CPU of the cluster).
    """

    encoder: str | Path
    index: str | Path = DEFAULT_INDEX
    data_dir: str | Path | None = None
    splits: tuple[str, ...] = SPLITS
    index_type: str = "flat"
    batch_size: int = DEFAULT_BATCH_SIZE
    force: bool = False
    target_precision: float | None = None
    resize: bool = False
    seed: int = 0
    support: int = DEFAULT_SUPPORT
    rule: str = DEFAULT_RULE
    progress: bool = True
    open_set: int | None = None
    min_recall: float | None = DEFAULT_MIN_RECALL
    engine: str = "local"
    address: str | None = None
    workers: int | None = None


class Phases:
    """Seconds and peak memory (MB of resident memory, Linux only) of named build phases."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.peak_mb: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        _reset_peak_memory()
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 3)
        peak = peak_memory_mb()
        if peak is not None:
            self.peak_mb[name] = peak


def build_index(settings: BuildSettings, embed: Embedder | None = None) -> tuple[Index, Phases]:
    """Embed a dataset into a new index bundle, calibrate it, and publish it atomically.

    Args:
        settings: what to build.
        embed: the embedder to use instead of loading ``settings.encoder`` (which is still
            the file stored in the bundle).

    Returns:
        (the opened index, seconds and peak memory of each phase).

    Raises:
        IndexExists, IndexLocked, DataError, EncoderError, BadIndexType.
    """
    path = check_settings(settings)
    encoder_file = Path(settings.encoder)
    phases = Phases()
    with bundle.writer_lock(path):
        with phases("load"):
            embed = embed or load_embedder(encoder_file, settings.batch_size)
            datasets = _load_splits(settings)
        store = _make_store(settings, embed, datasets, phases)
        report = training_report_of(encoder_file)
        with phases("write"):
            bundle.publish(
                path,
                lambda into: bundle.write_bundle(into, store.write, encoder_file, report),
                force=settings.force,
            )
    logger.info("built %s: %s", path, phases.seconds)
    return Index.open(path, embed=embed), phases


def check_settings(settings: BuildSettings) -> Path:
    """Reject what would fail a build, before any slow work (training, embedding).

    Returns:
        Where the index will be written.

    Raises:
        IndexExists: the index exists and ``force`` is not set.
        BadIndexType: FAISS does not understand the index type.
        DataError: support is below 1, or the rule is unknown.
    """
    path = bundle.index_path(settings.index)
    if (path.exists() or path.is_symlink()) and not settings.force:
        raise IndexExists(f"Index '{path}' already exists; pass --force to replace it.")
    new_faiss_index(8, settings.index_type)
    if settings.support < 1:
        raise DataError(f"support must be at least 1, got {settings.support}.")
    if settings.rule not in RULES:
        raise DataError(f"rule must be one of {', '.join(RULES)}, got '{settings.rule}'.")
    return path


def _load_splits(settings: BuildSettings) -> list[Dataset]:
    datasets = [
        load_dataset(settings.data_dir, split, resize=settings.resize) for split in settings.splits
    ]
    if any(d.class_names != datasets[0].class_names for d in datasets[1:]):
        raise DataError(
            f"Splits of '{settings.data_dir}' have different classes; give every split the same "
            "class folders."
        )
    return datasets


def _make_store(
    settings: BuildSettings, embed: Embedder, datasets: list[Dataset], phases: Phases
) -> IndexStore:
    images = np.concatenate([d.images for d in datasets])
    with phases("embed"):
        vectors = embed_in_chunks(embed, images, 4 * settings.batch_size, settings.progress)
    with phases("add"):
        rows = Rows(
            ids=np.arange(len(images), dtype=np.int64),
            labels=np.concatenate([d.labels for d in datasets]),
            split=np.concatenate([np.full(len(d), d.split) for d in datasets]),
            source_index=np.concatenate([d.source_index for d in datasets]),
            image_sha256=image_hashes(images),
            embeddings=vectors,
            images=images,
        )
        index = build_faiss_index(vectors, rows.ids, settings.index_type, settings.seed)
    with phases("calibrate"):
        calibrated = calibrate_build(
            settings,
            vectors,
            rows.labels,
            _open_set_vectors(settings, embed, datasets[0].source),
            len(datasets[0].class_names),
        )
    facts = build_facts(
        settings,
        calibrated,
        embedding_dim=int(vectors.shape[1]),
        fingerprint=dataset_fingerprint(rows.image_sha256, rows.labels, rows.split),
        source=datasets[0].source,
        count=len(rows),
    )
    names = tuple(datasets[0].class_names)
    return IndexStore(
        index, rows, names, calibrated.class_thresholds, facts, calibrated.calibration.probability
    )


@dataclass(frozen=True)
class Calibrated:
    """A build's thresholds: membership (global and per class) and pairs."""

    calibration: Calibration
    class_thresholds: np.ndarray
    pair_threshold: float
    pair_accuracy: float


def calibrate_build(
    settings: BuildSettings,
    vectors: np.ndarray,
    labels: np.ndarray,
    unlike: np.ndarray | None,
    class_count: int,
) -> Calibrated:
    """Calibrate a new index's thresholds on its stored vectors (leave-one-out) and, when
    given, non-digits claimed as classes (``unlike``)."""
    rng = np.random.default_rng(settings.seed)
    calibration = calibrate(
        vectors,
        labels,
        rng,
        target_precision=settings.target_precision,
        support=settings.support,
        unlike=unlike,
        min_recall=settings.min_recall or None,  # 0 means no floor, as None does
        rule=settings.rule,
    )
    pair_threshold, pair_accuracy = calibrate_pairs(vectors, labels, rng)
    class_thresholds = np.full(class_count, np.nan)
    for label, threshold in calibration.per_class.items():
        class_thresholds[label] = threshold
    return Calibrated(calibration, class_thresholds, pair_threshold, pair_accuracy)


def build_facts(
    settings: BuildSettings,
    calibrated: Calibrated,
    embedding_dim: int,
    fingerprint: str,
    source: str,
    count: int,
) -> IndexFacts:
    """The facts a new bundle records about itself."""
    calibration = calibrated.calibration
    return IndexFacts(
        embedding_dim=embedding_dim,
        threshold=calibration.threshold,
        index_type=settings.index_type,
        threshold_method=calibration.method,
        threshold_f1=calibration.f1,
        support=settings.support,
        rule=settings.rule,
        pair_threshold=calibrated.pair_threshold,
        pair_threshold_accuracy=calibrated.pair_accuracy,
        target_precision=settings.target_precision,
        min_recall=calibration.min_recall,
        true_claims_accepted=calibration.true_accepted,
        open_set_rejected=calibration.unlike_rejected,
        encoder_sha256=sha256_file(settings.encoder),
        dataset_fingerprint=fingerprint,
        source=source,
        splits=tuple(settings.splits),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        versions=_versions(),
        next_id=count,
    )


def open_set_count(settings: BuildSettings, source: str) -> int:
    """How many generated non-digits the calibration claims as classes: by default some for
    digits (the bundled MNIST, and ``mnist-aug``), none for other datasets."""
    if settings.open_set is not None:
        return settings.open_set
    return DEFAULT_OPEN_SET if source == "mnist" or augmented.is_spec(source) else 0


OPEN_SET_SEED = 10_000  # + the build's seed: apart from training's non-digits and the benchmarks'


def _open_set_vectors(settings: BuildSettings, embed: Embedder, source: str) -> np.ndarray | None:
    """Embedded non-digits for calibration, or None when the build calibrates without them."""
    count = open_set_count(settings, source)
    if count <= 0:
        return None
    from siamindex.exposure import exposure

    images = exposure(count, seed=OPEN_SET_SEED + settings.seed)
    return embed_in_chunks(embed, images, count, False)


def dataset_fingerprint(hashes: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> str:
    """SHA-256 over each row's split, label and image hash, in order."""
    digest = hashlib.sha256()
    for split, label, image in zip(splits, labels, hashes, strict=True):
        digest.update(f"{split}:{label}:{image}\n".encode())
    return digest.hexdigest()


def training_report_of(encoder_file: Path) -> Path | None:
    """The JSON report beside an encoder file, if it is that encoder's (SHA-256 matches)."""
    report = encoder_file.with_suffix(".json")
    try:
        recorded = json.loads(report.read_text()).get("encoder_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return report if recorded == sha256_file(encoder_file) else None


def _versions() -> dict[str, str]:
    import faiss
    import h5py

    from siamindex.version import __version__

    found = {
        "siamindex": __version__,
        "faiss": faiss.__version__,
        "h5py": h5py.__version__,
        "numpy": np.__version__,
    }
    for module in ("tensorflow", "keras"):
        if module in sys.modules:
            found[module] = getattr(sys.modules[module], "__version__", "?")
    return found


def _reset_peak_memory() -> None:
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory_mb() -> float | None:
    """This process's peak resident memory (MB; since the last reset), None off Linux."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None
