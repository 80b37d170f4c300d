"""``Index``: an encoder plus a verified bundle, with build, open, embed, add, remove and info.

The encoder (and so TensorFlow) is loaded only when images must be embedded; ``open`` and
``info`` verify and read the bundle without it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import store as bundles
from siamindex.data import SPLITS, load_dataset
from siamindex.errors import DataError, IncompatibleIndex, IndexExists
from siamindex.evaluation import calibrate
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


def _progress(total: int, desc: str, enabled: bool):  # type: ignore[no-untyped-def]
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit="img",
        file=sys.stderr,
        disable=not enabled or total < 5000,
        dynamic_ncols=True,
    )


class Index:
    """A similarity-search index: a verified bundle plus its encoder.

    Use ``Index.build`` or ``Index.open``; the constructor is internal.
    """

    def __init__(self, path: Path, folder: Path, store: IndexStore) -> None:
        self.path = path
        self.folder = folder
        self.store = store
        self._encoder: Any = None
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
            except IncompatibleIndex:
                # A writer may have swapped the link and pruned this bundle while we read it.
                if attempt == 2 or folder == bundles.resolve_bundle(path):
                    raise
        manifest_sha = bundles.read_manifest(folder)["files"][bundles.ENCODER_FILE]["sha256"]
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

        Raises:
            IndexExists, IndexLocked, DataError, EncoderError, ValueError.
        """
        path = index_path(name)
        if (path.exists() or path.is_symlink()) and not force:
            raise IndexExists(f"Index '{path}' already exists; pass --force to replace it.")
        bundles.new_faiss_index(8, index_type)  # reject a bad type before any work
        with bundles.writer_lock(path):
            with tempfile.TemporaryDirectory(prefix="siamindex-train-") as scratch:
                encoder_file = (
                    Path(encoder)
                    if encoder
                    else _train_default(Path(scratch), train_config, progress)
                )
                store, timings = _make_store(
                    encoder_file,
                    data_dir,
                    splits,
                    index_type,
                    batch_size,
                    target_precision,
                    resize,
                    progress,
                    seed,
                )
                started = time.perf_counter()
                bundles.publish(path, lambda into: store.write(into, encoder_file), force=force)
                timings["write"] = time.perf_counter() - started
        logger.info("built %s: %s", path, {k: round(v, 2) for k, v in timings.items()})
        index = cls.open(path)
        index.build_seconds = timings
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

    def embed(self, images: np.ndarray, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
        """Embed uint8 (n, 28, 28) images with the index's encoder: (n, embedding_dim) float32."""
        from siamindex.model import embed

        return embed(self.encoder, images, batch_size)

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
            folder = bundles.publish(
                self.path,
                lambda into: updated.write(into, encoder_file),
                force=True,
                must_exist=True,
            )
        self.folder, self.store, self._partition = folder, updated, None

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
        size = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
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
            "class_thresholds": thresholds,
            "next_id": attrs.get("next_id"),
            "versions": attrs.get("versions", {}),
            "created": attrs.get("created"),
            "format_version": attrs.get("format_version"),
            "size_bytes": size,
        }


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
) -> tuple[IndexStore, dict[str, float]]:
    from siamindex.data import sha256_file
    from siamindex.model import embed, load_encoder

    encoder = load_encoder(encoder_file)
    datasets = [load_dataset(data_dir, split, resize=resize) for split in splits]
    class_names = datasets[0].class_names
    for dataset in datasets[1:]:
        if dataset.class_names != class_names:
            raise DataError(
                f"Splits of '{data_dir}' have different classes; give every split the same "
                "class folders."
            )
    images = np.concatenate([d.images for d in datasets])
    timings: dict[str, float] = {}
    started = time.perf_counter()
    with _progress(len(images), "embedding", progress) as bar:
        chunks = []
        for start in range(0, len(images), batch_size * 8):
            chunk = images[start : start + batch_size * 8]
            chunks.append(embed(encoder, chunk, batch_size))
            bar.update(len(chunk))
        vectors = np.concatenate(chunks)
    timings["embed"] = time.perf_counter() - started

    started = time.perf_counter()
    labels = np.concatenate([d.labels for d in datasets])
    split_names = np.concatenate([np.full(len(d), d.split) for d in datasets])
    hashes = bundles.image_hashes(images)
    rows = Rows(
        ids=np.arange(len(images), dtype=np.int64),
        labels=labels,
        split=split_names,
        source_index=np.concatenate([d.source_index for d in datasets]),
        image_sha256=hashes,
        embeddings=vectors,
    )
    store = IndexStore.create(rows, class_names, index_type, seed=seed)
    timings["add"] = time.perf_counter() - started

    started = time.perf_counter()
    calibration = calibrate(
        vectors, labels, np.random.default_rng(seed), target_precision=target_precision
    )
    for label, threshold in calibration["per_class"].items():  # type: ignore[union-attr]
        store.class_thresholds[label] = threshold
    timings["calibrate"] = time.perf_counter() - started
    store.attrs.update(
        {
            "metric": "l2",
            "distance": "euclidean",
            "threshold": calibration["threshold"],
            "threshold_distance": "euclidean",
            "threshold_method": calibration["method"],
            "threshold_f1": calibration["f1"],
            "target_precision": -1.0 if target_precision is None else float(target_precision),
            "encoder_sha256": sha256_file(encoder_file),
            "dataset_fingerprint": dataset_fingerprint(hashes, labels, split_names),
            "source": datasets[0].source,
            "splits": list(splits),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions(),
            "embedding_dim": int(vectors.shape[1]),
        }
    )
    return store, timings
