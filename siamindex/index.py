"""``Index``: an encoder plus a verified bundle, with build, open, embed, add, remove and info.

The encoder (and so TensorFlow) is loaded only when images must be embedded; ``open`` and
``info`` verify and read the bundle without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import store as bundles
from siamindex.data import SPLITS, load_dataset
from siamindex.errors import DataError, IncompatibleIndex, IndexExists
from siamindex.evaluation import (
    ARTICLE_THRESHOLD,
    DEFAULT_SUPPORT,
    calibrate,
    calibrate_pairs,
)
from siamindex.query import (
    Comparison,
    MembershipResult,
    QueryResult,
    check_membership,
    compare,
    nearest,
)
from siamindex.search import ClassPartition
from siamindex.store import IndexStore, Rows

logger = logging.getLogger(__name__)

DEFAULT_NAME = "mnist"
DEFAULT_BATCH_SIZE = 1024
INDEXES_ENV = "SIAMINDEX_INDEXES"


def index_path(name: str | os.PathLike[str]) -> Path:
    """Where an index lives: a name like "mnist" is ``$SIAMINDEX_INDEXES/mnist`` (default
    ``./indexes/mnist``); anything with a path separator is taken as a path."""
    text = os.fspath(name)
    if not text or text in (".", ".."):
        raise DataError(f"'{text}' is not an index name; use a name such as mnist.")
    if os.sep in text or (os.altsep and os.altsep in text):
        return Path(text)
    if text.startswith("."):
        raise DataError(f"Index name '{text}' may not start with a dot; those names are internal.")
    return Path(os.environ.get(INDEXES_ENV, "indexes")) / text


def _versions() -> dict[str, str]:
    import faiss
    import h5py

    from siamindex import __version__

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


def embed_images(encoder: Any, images: np.ndarray, batch_size: int, progress: bool) -> np.ndarray:
    """Embed in chunks, with a progress bar on stderr for large batches (5,000+ images)."""
    from tqdm.auto import tqdm

    from siamindex.model import embed

    step = batch_size * 4
    chunks = []
    show = progress and len(images) >= 5000
    with tqdm(
        total=len(images),
        desc="embedding",
        unit="img",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(images), step):
            chunks.append(embed(encoder, images[start : start + step], batch_size))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks)


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
        peak = _peak_memory_mb()
        if peak is not None:
            self.peak_mb[name] = peak


def _reset_peak_memory() -> None:
    try:  # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM)
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def _peak_memory_mb() -> float | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


class Index:
    """A similarity-search index: a verified bundle plus its encoder.

    Use ``Index.build`` or ``Index.open``; the constructor is internal.
    """

    def __init__(self, path: Path, folder: Path, store: IndexStore) -> None:
        self.path = path
        self.folder = folder
        self.store = store
        self._encoder: Any = None
        self.build_phases: Phases | None = None  # set by Index.build
        self._partition: ClassPartition | None = None

    # -- opening and building --------------------------------------------------------------

    @classmethod
    def open(cls, name: str | os.PathLike[str]) -> Index:
        """Open and verify an index by name or path.

        Raises:
            IndexNotFound: nothing is there.
            IncompatibleIndex: a file is missing, damaged or inconsistent.
        """
        path = index_path(name)
        for attempt in range(3):
            folder = bundles.resolve_bundle(path)
            try:
                store = IndexStore.read(folder)
                break
            except (IncompatibleIndex, FileNotFoundError) as exc:
                # A writer may have swapped the link and pruned this bundle while we read it:
                # then read the bundle the name points at now.
                if attempt < 2 and folder != bundles.resolve_bundle(path):
                    continue
                if isinstance(exc, FileNotFoundError):
                    raise IncompatibleIndex(
                        f"Index '{path}' lost {exc.filename} while being read; {bundles.REBUILD}."
                    ) from None
                raise
        # From the manifest verified with the read: the folder may be gone by now (a writer
        # prunes old bundles), and all that is needed was read in that one pass.
        manifest_sha = store.manifest["files"][bundles.ENCODER_FILE]["sha256"]
        recorded = store.attrs.get("encoder_sha256")
        if recorded and recorded != manifest_sha:
            raise IncompatibleIndex(
                f"Index '{path}' holds an encoder (SHA-256 {manifest_sha[:12]}) other than the one "
                f"it was built with ({recorded[:12]}); {bundles.REBUILD}."
            )
        return cls(path, folder, store)

    @classmethod
    def build(
        cls,
        name: str | os.PathLike[str] = DEFAULT_NAME,
        encoder: str | os.PathLike[str] | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        splits: Sequence[str] = SPLITS,
        index_type: str = "flat",
        batch_size: int = DEFAULT_BATCH_SIZE,
        force: bool = False,
        target_precision: float | None = None,
        resize: bool = False,
        train_config: Any = None,
        progress: bool = True,
        seed: int = 0,
        support: int = DEFAULT_SUPPORT,
    ) -> Index:
        """Embed a dataset into a new index bundle, calibrate it, and publish it atomically.

        Args:
            name: index name or path.
            encoder: a ``.keras`` encoder file; None trains the default encoder first.
            data_dir: dataset folder; None for the bundled MNIST.
            splits: which splits to index.
            index_type: "flat" or a FAISS index_factory string.
            batch_size: images per encoder call.
            force: replace an existing index (only once the new one is complete).
            target_precision: calibrate to the largest threshold reaching this precision
                instead of max F1.
            resize: resize class-folder images that are not 28x28.
            train_config: a ``training.TrainConfig`` used when ``encoder`` is None.
            progress: show progress bars.
            seed: drives sampling for FAISS training and calibration.
            support: a membership claim holds when this many stored members of the class lie
                within the threshold (1: the nearest member alone decides).

        Raises:
            IndexExists, IndexLocked, DataError, EncoderError, ValueError.
        """
        path = index_path(name)
        if (path.exists() or path.is_symlink()) and not force:
            raise IndexExists(f"Index '{path}' already exists; pass --force to replace it.")
        bundles.new_faiss_index(8, index_type)  # reject a bad type before any work
        if support < 1:
            raise ValueError(f"support must be at least 1, got {support}")
        with bundles.writer_lock(path):
            with tempfile.TemporaryDirectory(prefix="siamindex-train-") as scratch:
                encoder_file = (
                    Path(encoder)
                    if encoder
                    else _train_default(Path(scratch), train_config, progress)
                )
                phases = Phases()
                store = _make_store(
                    encoder_file,
                    data_dir,
                    splits,
                    index_type,
                    batch_size,
                    target_precision,
                    resize,
                    progress,
                    seed,
                    support,
                    phases,
                )
                report = _training_report_of(encoder_file)
                with phases("write"):
                    bundles.publish(
                        path, lambda into: store.write(into, encoder_file, report), force=force
                    )
        logger.info("built %s: %s", path, phases.seconds)
        index = cls.open(path)
        index.build_phases = phases
        return index

    # -- using -----------------------------------------------------------------------------

    @property
    def encoder(self) -> Any:
        """The bundle's Keras encoder, loaded (safe mode) and checked on first use."""
        if self._encoder is None:
            from siamindex.model import embedding_dim_of, load_encoder

            encoder = load_encoder(self.folder / bundles.ENCODER_FILE)
            if embedding_dim_of(encoder) != self.store.embedding_dim:
                raise IncompatibleIndex(
                    f"Index '{self.path}' holds {self.store.embedding_dim}-d vectors but its "
                    f"encoder outputs {embedding_dim_of(encoder)}-d; {bundles.REBUILD}."
                )
            self._encoder = encoder
        return self._encoder

    def embed(
        self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False
    ) -> np.ndarray:
        """Embed uint8 (n, 28, 28) images with the index's encoder: (n, embedding_dim) float32.

        Identical images are embedded once. ``progress`` shows a bar for large batches.
        """
        images = np.ascontiguousarray(images, dtype=np.uint8)
        first: dict[bytes, int] = {}  # a dict of row bytes: 100x faster than np.unique(axis=0)
        keep: list[int] = []
        inverse = np.empty(len(images), dtype=np.int64)
        for i, image in enumerate(images):
            position = first.setdefault(image.tobytes(), len(keep))
            if position == len(keep):
                keep.append(i)
            inverse[i] = position
        vectors = embed_images(self.encoder, images[keep], batch_size, progress)
        return vectors[inverse]

    def query(
        self,
        images: np.ndarray,
        k: int = 5,
        names: Sequence[str] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        progress: bool = False,
    ) -> list[QueryResult]:
        """The k nearest stored images of each image, with the predicted class or "no match".

        Raises:
            DataError: k is not between 1 and the index size.
        """
        if not 1 <= k <= len(self.store.rows):
            raise DataError(
                f"k must be between 1 and the index size ({len(self.store.rows)}); got {k}."
            )
        names = list(names) if names is not None else [str(i) for i in range(len(images))]
        vectors = self.embed(images, progress=progress)
        return nearest(
            self.store, self.partition, vectors, names, k, nprobe=nprobe, ef_search=ef_search
        )

    def check(
        self,
        images: np.ndarray,
        classes: Sequence[str],
        per_class: bool = False,
        names: Sequence[str] | None = None,
        true_labels: Sequence[str | None] | None = None,
        progress: bool = False,
    ) -> list[MembershipResult]:
        """Answer "image i belongs to class classes[i]" for each i (one embedding pass, then
        class-restricted exact search in FAISS).

        Raises:
            DataError: a class (claimed or true) is not in the index.
        """
        if len(classes) != len(images):
            raise DataError(
                f"{len(images)} images but {len(classes)} classes; give one class per image."
            )
        groups = np.array([self.class_index(c) for c in classes], dtype=np.int64)
        truth = None
        if true_labels is not None:
            truth = np.array([-1 if t is None else self.class_index(t) for t in true_labels])
        names = list(names) if names is not None else [str(i) for i in range(len(images))]
        vectors = self.embed(images, progress=progress)
        return check_membership(
            self.store, self.partition, vectors, names, groups, per_class, truth
        )

    @property
    def support(self) -> int:
        """How many stored members of a class must lie within the threshold for a claim to hold
        (1 for indexes built before this was stored)."""
        return int(self.store.attrs.get("support", 1))

    @property
    def pair_threshold(self) -> float:
        """The calibrated pair threshold ("same" when distance < it); the article's 0.5 for
        indexes built before it was stored."""
        return float(self.store.attrs.get("pair_threshold", ARTICLE_THRESHOLD))

    def compare(
        self, first: np.ndarray, second: np.ndarray, names: tuple[str, str] = ("a", "b")
    ) -> Comparison:
        """Distance between two (28, 28) images and the verdict at the index's pair threshold.

        Two arbitrary images are a pair, not a membership claim, so the verdict uses the pair
        threshold (calibrated on pairs of stored images), not the nearest-member one.
        """
        vectors = self.embed(np.stack([first, second]))
        return compare(vectors[0], vectors[1], names, self.pair_threshold)

    @property
    def partition(self) -> ClassPartition:
        """Exact per-class sub-indexes over the stored embeddings (built on first use)."""
        if self._partition is None:
            self._partition = ClassPartition(self.store.rows.embeddings, self.store.rows.labels)
        return self._partition

    def class_index(self, class_name: str) -> int:
        """Position of a class name.

        Raises:
            DataError: the index has no such class.
        """
        try:
            return self.store.class_names.index(str(class_name))
        except ValueError:
            known = ", ".join(self.store.class_names[:20])
            raise DataError(
                f"Unknown class '{class_name}'; this index has classes {known}."
            ) from None

    def add(self, images: np.ndarray, label: str, new_class: bool = False) -> np.ndarray:
        """Embed and add images of class ``label``; publishes a new bundle version.

        Returns:
            (n,) int64 the new ids (never used before in this index).
        """
        if str(label) not in self.store.class_names and not new_class:
            self.class_index(label)  # raises the "unknown class" error
        vectors = self.embed(images)

        def change(store: IndexStore) -> IndexStore:
            names = store.class_names
            if str(label) not in names:
                names = (*names, str(label))
                store.class_thresholds = np.append(store.class_thresholds, np.nan)
                store.class_names = names
            rows = Rows(
                ids=np.zeros(len(images), dtype=np.int64),
                labels=np.full(len(images), names.index(str(label)), dtype=np.int64),
                split=np.full(len(images), "added"),
                source_index=np.full(len(images), -1, dtype=np.int64),
                image_sha256=bundles.image_hashes(images),
                embeddings=vectors,
            )
            return store.add(rows)

        self._change(change)
        return self.store.rows.ids[-len(images) :]

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        """Remove stored ids; publishes a new bundle version. Other ids stay as they were.

        Raises:
            DataError: an id is not in the index.
        """
        ids = np.unique(np.asarray(ids, dtype=np.int64))
        try:
            self.store.rows_of(ids)
        except KeyError as exc:
            raise DataError(
                f"Id(s) {exc.args[0]} are not in index '{self.path}'; see `siamindex info`."
            ) from None
        if len(ids) >= len(self.store.rows):
            raise DataError(
                "Removing every row would leave an empty index; build a new one instead."
            )
        self._change(lambda store: store.remove(ids))

    def _change(self, change: Callable[[IndexStore], IndexStore]) -> None:
        with bundles.writer_lock(self.path):
            current = Index.open(self.path)  # re-read under the lock: another writer may have won
            updated = change(current.store)
            encoder_file = current.folder / bundles.ENCODER_FILE
            report = current.folder / bundles.TRAINING_FILE
            folder = bundles.publish(
                self.path,
                lambda into: updated.write(into, encoder_file, report if report.exists() else None),
                force=True,
                must_exist=True,
            )
            updated.manifest = bundles.read_manifest(folder)
        self.folder, self.store, self._partition = folder, updated, None

    def training_report(self) -> dict[str, Any] | None:
        """The encoder's training report, when the bundle has one (built by training, or from
        an encoder file whose report lay beside it)."""
        path = self.folder / bundles.TRAINING_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def info(self) -> dict[str, Any]:
        """Facts about the index: counts per class and split, dimension, type, encoder
        fingerprint, thresholds, versions, creation time, size on disk."""
        rows, names = self.store.rows, self.store.class_names
        per_class = {
            names[c]: int(n) for c, n in enumerate(np.bincount(rows.labels, minlength=len(names)))
        }
        splits, counts = np.unique(rows.split, return_counts=True)
        thresholds = {
            names[c]: float(t) for c, t in enumerate(self.store.class_thresholds) if np.isfinite(t)
        }
        attrs = self.store.attrs
        size = sum(int(entry["bytes"]) for entry in self.store.manifest.get("files", {}).values())
        return {
            "name": self.path.name,
            "path": str(self.path),
            "bundle": str(self.folder),
            "count": len(rows),
            "per_class": per_class,
            "per_split": {str(s): int(n) for s, n in zip(splits, counts, strict=True)},
            "embedding_dim": self.store.embedding_dim,
            "metric": attrs.get("metric", "l2"),
            "index_type": attrs.get("index_type", "flat"),
            "encoder_sha256": attrs.get("encoder_sha256"),
            "dataset_fingerprint": attrs.get("dataset_fingerprint"),
            "threshold": attrs.get("threshold"),
            "threshold_distance": attrs.get("threshold_distance", "euclidean"),
            "threshold_method": attrs.get("threshold_method"),
            "pair_threshold": attrs.get("pair_threshold", ARTICLE_THRESHOLD),
            "support": self.support,
            "class_thresholds": thresholds,
            "next_id": attrs.get("next_id"),
            "versions": attrs.get("versions", {}),
            "created": attrs.get("created"),
            "format_version": attrs.get("format_version"),
            "size_bytes": size,
        }


def _training_report_of(encoder_file: Path) -> Path | None:
    """The JSON report beside an encoder file, if it is that encoder's (SHA-256 matches)."""
    from siamindex.data import sha256_file

    report = encoder_file.with_suffix(".json")
    try:
        recorded = json.loads(report.read_text()).get("encoder_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return report if recorded == sha256_file(encoder_file) else None


def _train_default(scratch: Path, config: Any, progress: bool) -> Path:
    from siamindex.training import TrainConfig, train

    result = train(config or TrainConfig(), scratch / "encoder.keras", progress=progress)
    return result.path


def dataset_fingerprint(hashes: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> str:
    """SHA-256 over each row's split, label and image hash, in order."""
    digest = hashlib.sha256()
    for split, label, image in zip(splits, labels, hashes, strict=True):
        digest.update(f"{split}:{label}:{image}\n".encode())
    return digest.hexdigest()


def _make_store(
    encoder_file: Path,
    data_dir: Any,
    splits: Sequence[str],
    index_type: str,
    batch_size: int,
    target_precision: float | None,
    resize: bool,
    progress: bool,
    seed: int,
    support: int,
    phases: Phases,
) -> IndexStore:
    from siamindex.data import sha256_file
    from siamindex.model import load_encoder

    with phases("load"):
        encoder = load_encoder(encoder_file)
        datasets = [load_dataset(data_dir, split, resize=resize) for split in splits]
        if any(d.class_names != datasets[0].class_names for d in datasets[1:]):
            raise DataError(
                f"Splits of '{data_dir}' have different classes; give every split the same "
                "class folders."
            )
        images = np.concatenate([d.images for d in datasets])
    with phases("embed"):
        vectors = embed_images(encoder, images, batch_size, progress)
    with phases("add"):
        rows = Rows(
            ids=np.arange(len(images), dtype=np.int64),
            labels=np.concatenate([d.labels for d in datasets]),
            split=np.concatenate([np.full(len(d), d.split) for d in datasets]),
            source_index=np.concatenate([d.source_index for d in datasets]),
            image_sha256=bundles.image_hashes(images),
            embeddings=vectors,
        )
        store = IndexStore.create(rows, datasets[0].class_names, index_type, seed=seed)
    with phases("calibrate"):
        rng = np.random.default_rng(seed)
        calibration = calibrate(
            vectors, rows.labels, rng, target_precision=target_precision, support=support
        )
        pair_threshold, pair_accuracy = calibrate_pairs(vectors, rows.labels, rng)
    for label, threshold in calibration.per_class.items():
        store.class_thresholds[label] = threshold
    store.attrs.update(
        {
            "metric": "l2",
            "distance": "euclidean",
            "threshold": calibration.threshold,
            "threshold_distance": "euclidean",
            "threshold_method": calibration.method,
            "threshold_f1": calibration.f1,
            "support": support,
            "pair_threshold": pair_threshold,
            "pair_threshold_accuracy": pair_accuracy,
            "target_precision": -1.0 if target_precision is None else float(target_precision),
            "encoder_sha256": sha256_file(encoder_file),
            "dataset_fingerprint": dataset_fingerprint(rows.image_sha256, rows.labels, rows.split),
            "source": datasets[0].source,
            "splits": list(splits),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "embedding_dim": int(vectors.shape[1]),
        }
    )
    return store
