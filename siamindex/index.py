"""``Index``: a verified bundle plus its encoder: open, query, check, compare, add, remove, info.

The encoder (and so TensorFlow) is loaded only when images must be embedded; ``open`` and
``info`` verify and read the bundle without it. Building is ``siamindex.build``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import blas, bundle, curation
from siamindex.defaults import DEFAULT_CLASS_EF, DEFAULT_CLASS_NPROBE, SELECTOR_FROM
from siamindex.embedding import Embedder, embed_distinct, load_embedder
from siamindex.errors import BadSearchSetting, DataError, IncompatibleIndex
from siamindex.facts import IndexFacts
from siamindex.query import (
    Comparison,
    MembershipResult,
    QueryResult,
    check_membership,
    compare,
    nearest,
)
from siamindex.search import ClassPartition, GraphPartition, SelectorPartition
from siamindex.store import IndexStore, Rows, image_hashes, search_parameters

logger = logging.getLogger(__name__)
OPEN_ATTEMPTS = 3  # a writer may swap and prune the bundle we are reading; then read the new one


@dataclass(frozen=True)
class IndexInfo:
    """What ``siamindex info`` shows: the facts, plus counts and where the bundle lies.

    Attributes:
        name, path, bundle: the index's name, the path given, the bundle folder it points at.
        count: stored images.
        per_class, per_split: stored images by class name and by split.
        class_thresholds: class name -> its own calibrated threshold (classes that have one).
        size_bytes: the bundle's size on disk.
        facts: what the index records about itself.
        blas: this machine's FAISS OpenBLAS: its kernel and who chose it (``blas.report``).
    """

    name: str
    path: str
    bundle: str
    count: int
    per_class: dict[str, int]
    per_split: dict[str, int]
    class_thresholds: dict[str, float]
    size_bytes: int
    facts: IndexFacts
    blas: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """One flat JSON object: the facts beside the counts (the CLI's ``--format json``)."""
        out = asdict(self)
        return {**out.pop("facts"), **out}


class Index:
    """A similarity-search index: a verified bundle plus its encoder.

    Use ``Index.open`` (or ``siamindex.build.build_index``); the constructor is internal.
    """

    def __init__(
        self, path: Path, folder: Path, store: IndexStore, embed: Embedder | None = None
    ) -> None:
        self.path = path
        self.folder = folder
        self.store = store
        self._embed = embed
        self._partition: ClassPartition | None = None

    @classmethod
    def open(cls, name: str | os.PathLike[str], embed: Embedder | None = None) -> Index:
        """Open and verify an index by name or path.

        Args:
            name: index name or path.
            embed: use this embedder instead of the bundle's encoder file.

        Raises:
            IndexNotFound: nothing is there.
            IncompatibleIndex: a file is missing, damaged or inconsistent.
        """
        path = bundle.index_path(name)
        for attempt in range(OPEN_ATTEMPTS):
            folder = bundle.resolve_bundle(path)
            try:
                store = IndexStore.read(folder, bundle.verify_files(folder))
                break
            except (IncompatibleIndex, FileNotFoundError) as exc:
                if attempt < OPEN_ATTEMPTS - 1 and folder != bundle.resolve_bundle(path):
                    continue
                if isinstance(exc, FileNotFoundError):
                    raise IncompatibleIndex(
                        f"Index '{path}' lost {exc.filename} while being read; {bundle.REBUILD}."
                    ) from None
                raise
        # From the manifest verified with the read: the folder may be gone by now (a writer
        # prunes old bundles), and all that is needed was read in that one pass.
        manifest_sha = (store.manifest or {})["files"][bundle.ENCODER_FILE]["sha256"]
        recorded = store.facts.encoder_sha256
        if recorded and recorded != manifest_sha:
            raise IncompatibleIndex(
                f"Index '{path}' holds an encoder (SHA-256 {manifest_sha[:12]}) other than the one "
                f"it was built with ({recorded[:12]}); {bundle.REBUILD}."
            )
        return cls(path, folder, store, embed)

    @property
    def facts(self) -> IndexFacts:
        """What the index records about itself (thresholds, support, type, ...)."""
        return self.store.facts

    # -- embedding ---------------------------------------------------------------------------

    def embed(self, images: np.ndarray, progress: bool = False) -> np.ndarray:
        """Embed uint8 (n, 28, 28) images with the index's encoder: (n, embedding_dim) float32.

        Identical images are embedded once. ``progress`` shows a bar for large batches.

        Raises:
            IncompatibleIndex: the encoder's output width differs from the stored vectors'.
        """
        vectors = embed_distinct(self.embedder, images, progress=progress)
        if len(vectors) and vectors.shape[1] != self.store.embedding_dim:
            raise IncompatibleIndex(
                f"Index '{self.path}' holds {self.store.embedding_dim}-d vectors but its "
                f"encoder outputs {vectors.shape[1]}-d; {bundle.REBUILD}."
            )
        return vectors

    @property
    def embedder(self) -> Embedder:
        """The bundle's encoder as a callable (loaded, with TensorFlow, on first use)."""
        if self._embed is None:
            self._embed = load_embedder(self.folder / bundle.ENCODER_FILE)
        return self._embed

    @property
    def partition(self) -> ClassPartition:
        """Class-restricted search (built on first use): exact per-class sub-indexes over the
        stored embeddings; for IVF indexes of 200,000 rows or more, the index itself with a
        per-class id selector; for HNSW indexes, the bundle's graph per class (approximate)."""
        if self._partition is None:
            rows = self.store.rows
            if self.store.kind == "ivf" and len(rows) >= SELECTOR_FROM:
                self._partition = SelectorPartition(
                    self.store.index, rows.ids, rows.labels, DEFAULT_CLASS_NPROBE
                )
            elif self.store.kind == "hnsw":
                graphs = self.store.class_graph_map
                self._partition = GraphPartition(
                    self.store.index, rows.ids, rows.labels, graphs, DEFAULT_CLASS_EF
                )
            else:
                self._partition = ClassPartition(rows.embeddings, rows.labels)
        return self._partition

    # -- reading -----------------------------------------------------------------------------

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
            BadSearchSetting: nprobe or ef_search does not apply to this index type.
        """
        self.check_k(k)  # before the slow part
        vectors = self.embed(images, progress=progress)
        return self.query_vectors(vectors, k, names, nprobe=nprobe, ef_search=ef_search)

    def query_vectors(
        self,
        vectors: np.ndarray,
        k: int = 5,
        names: Sequence[str] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[QueryResult]:
        """``query`` for images already embedded with this index's encoder ((n, d) float32)."""
        self.check_k(k)
        names = list(names) if names is not None else [str(i) for i in range(len(vectors))]
        return nearest(
            self.store, self.partition, vectors, names, k, nprobe=nprobe, ef_search=ef_search
        )

    def check(
        self,
        images: np.ndarray,
        classes: Sequence[str],
        per_class: bool = False,
        names: Sequence[str] | None = None,
        true_classes: Sequence[str | None] | None = None,
        progress: bool = False,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[MembershipResult]:
        """Answer "image i belongs to class classes[i]" for each i (one embedding pass, then
        class-restricted search in FAISS: exact; with ``nprobe`` IVF lists per class on an IVF
        type; in an HNSW graph per class, ``ef_search`` wide (16 by default), on an HNSW type).

        Raises:
            DataError: a class (claimed or true) is not in the index.
            BadSearchSetting: nprobe or ef_search on an index of another type.
        """
        self.check_search(nprobe, ef_search)
        if len(classes) != len(images):
            raise DataError(
                f"{len(images)} images but {len(classes)} classes; give one class per image."
            )
        self.class_positions(classes, true_classes)  # unknown classes fail before the slow part
        vectors = self.embed(images, progress=progress)
        return self.check_vectors(
            vectors, classes, per_class, names, true_classes, nprobe, ef_search
        )

    def check_vectors(
        self,
        vectors: np.ndarray,
        classes: Sequence[str],
        per_class: bool = False,
        names: Sequence[str] | None = None,
        true_classes: Sequence[str | None] | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> list[MembershipResult]:
        """``check`` for images already embedded with this index's encoder ((n, d) float32)."""
        self.check_search(nprobe, ef_search)
        if len(classes) != len(vectors):
            raise DataError(
                f"{len(vectors)} images but {len(classes)} classes; give one class per image."
            )
        claimed, truth = self.class_positions(classes, true_classes)
        names = list(names) if names is not None else [str(i) for i in range(len(vectors))]
        partition = self.partition
        if ef_search is not None and isinstance(partition, GraphPartition):
            partition = partition.tuned(ef_search)
        return check_membership(
            self.store, partition, vectors, names, claimed, per_class, truth, nprobe
        )

    def check_search(self, nprobe: int | None, ef_search: int | None = None) -> None:
        """Raises BadSearchSetting unless each setting is None, or >= 1 on an index of its type
        (nprobe: IVF, an IVF index per class; ef_search: HNSW, each class graph's breadth)."""
        for name, value in (("nprobe", nprobe), ("ef_search", ef_search)):
            if value is not None and value < 1:
                raise BadSearchSetting(f"{name} must be at least 1; got {value}.")
        search_parameters(self.store.index, nprobe, ef_search, self.facts.index_type)

    def check_k(self, k: int) -> None:
        """Raises DataError unless 1 <= k <= the index size."""
        if not 1 <= k <= len(self.store.rows):
            raise DataError(
                f"k must be between 1 and the index size ({len(self.store.rows)}); got {k}."
            )

    def class_positions(
        self, classes: Sequence[str], true_classes: Sequence[str | None] | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Positions of claimed and true classes in the index (-1: truth unknown).

        Raises:
            DataError: a class is not in the index.
        """
        claimed = np.array([self.class_index(c) for c in classes], dtype=np.int64)
        if true_classes is None:
            return claimed, None
        return claimed, np.array([-1 if t is None else self.class_index(t) for t in true_classes])

    def compare(
        self, first: np.ndarray, second: np.ndarray, names: tuple[str, str] = ("a", "b")
    ) -> Comparison:
        """Distance between two (28, 28) images and the verdict at the index's pair threshold.

        Two arbitrary images are a pair, not a membership claim, so the verdict uses the pair
        threshold (calibrated on pairs of stored images), not the nearest-member one.
        """
        vectors = self.embed(np.stack([first, second]))
        return compare(vectors[0], vectors[1], names, self.facts.pair_threshold)

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

    def stored_images(self, rows: np.ndarray) -> list[np.ndarray | None]:
        """The (28, 28) uint8 images of stored rows: the pixels the bundle keeps; for bundles
        built before it kept them, read back from the dataset they were built from (None for
        images added later, or a dataset no longer there).

        Raises:
            DataError: the source dataset cannot be read.
        """
        from siamindex.data import load_dataset

        kept = self.store.image_rows(np.asarray(rows, dtype=np.int64))
        if kept is not None:
            return list(kept)
        source = self.facts.source
        cache: dict[str, Any] = {}
        out: list[np.ndarray | None] = []
        for row in rows:
            split = str(self.store.rows.split[row])
            where = int(self.store.rows.source_index[row])
            if split not in ("train", "test") or where < 0:
                out.append(None)
                continue
            if split not in cache:
                cache[split] = load_dataset(None if source == "mnist" else source, split)
            out.append(cache[split].images[where])
        return out

    def training_report(self) -> dict[str, Any] | None:
        """The encoder's training report, when the bundle has one (built by training, or from
        an encoder file whose report lay beside it)."""
        path = self.folder / bundle.TRAINING_FILE
        return json.loads(path.read_text()) if path.is_file() else None

    def info(self) -> IndexInfo:
        """Facts about the index, with counts per class and split and its size on disk."""
        rows, names = self.store.rows, self.store.class_names
        counts = np.bincount(rows.labels, minlength=len(names))
        splits, split_counts = np.unique(rows.split, return_counts=True)
        files = (self.store.manifest or {}).get("files", {})
        return IndexInfo(
            name=self.path.name,
            path=str(self.path),
            bundle=str(self.folder),
            count=len(rows),
            per_class={names[c]: int(n) for c, n in enumerate(counts)},
            per_split={str(s): int(n) for s, n in zip(splits, split_counts, strict=True)},
            class_thresholds={
                names[c]: float(t)
                for c, t in enumerate(self.store.class_thresholds)
                if np.isfinite(t)
            },
            size_bytes=sum(int(entry["bytes"]) for entry in files.values()),
            facts=self.facts,
            blas=blas.report(),
        )

    # -- writing -----------------------------------------------------------------------------

    def add(self, images: np.ndarray, class_name: str, new_class: bool = False) -> np.ndarray:
        """Embed and add images of class ``class_name``; publishes a new bundle version.

        Returns:
            (n,) int64 the new ids (never used before in this index).

        Raises:
            DataError: the class is unknown and ``new_class`` was not given.
        """
        class_name = str(class_name)
        if class_name not in self.store.class_names and not new_class:
            self.class_index(class_name)  # raises the "unknown class" error
        vectors = self.embed(images)

        def change(store: IndexStore) -> IndexStore:
            store = curation.with_late_class(store, class_name)
            rows = Rows(
                ids=np.zeros(len(images), dtype=np.int64),
                labels=np.full(len(images), store.class_names.index(class_name), dtype=np.int64),
                split=np.full(len(images), "added"),
                source_index=np.full(len(images), -1, dtype=np.int64),
                image_sha256=image_hashes(images),
                embeddings=vectors,
                images=np.asarray(images, dtype=np.uint8),
            )
            return curation.recalibrate(store.add(rows), [class_name])

        self._change(change)
        return self.store.rows.ids[-len(images) :]

    def relabel(self, ids: Sequence[int] | np.ndarray, class_name: str) -> None:
        """Store the given ids as class ``class_name`` (vectors and ids unchanged); publishes
        a new bundle version. Late classes it touches are recalibrated.

        Raises:
            DataError: an id is not in the index, or the class is unknown.
        """
        label = self.class_index(str(class_name))
        ids = curation.stored_ids(self.store, ids, self.path)

        def change(store: IndexStore) -> IndexStore:
            rows = store.rows_of(ids)
            touched = {store.class_names[c] for c in store.rows.labels[rows]} | {str(class_name)}
            return curation.recalibrate(store.relabel(rows, label), touched)

        self._change(change)

    def audit(self, k: int = curation.DEFAULT_AUDIT_NEIGHBOURS) -> list[curation.Suspect]:
        """Stored images whose label their ``k`` nearest stored images disagree with, most
        suspect first (``curation.suspects``; DataError for k below 1)."""
        return curation.suspects(self.store, k, partition=self.partition)

    def remove(self, ids: Sequence[int] | np.ndarray) -> None:
        """Remove stored ids; publishes a new bundle version. Other ids stay as they were.

        Raises:
            DataError: an id is not in the index, or every row would go.
        """
        ids = curation.stored_ids(self.store, ids, self.path)
        if len(ids) >= len(self.store.rows):
            raise DataError(
                "Removing every row would leave an empty index; build a new one instead."
            )

        def change(store: IndexStore) -> IndexStore:
            touched = {store.class_names[c] for c in store.rows.labels[store.rows_of(ids)]}
            return curation.recalibrate(store.remove(ids), touched)

        self._change(change)

    def _change(self, change: Callable[[IndexStore], IndexStore]) -> None:
        with bundle.writer_lock(self.path):
            bundle.adopt(self.path)  # a plain folder: read it where it will stay
            current = Index.open(self.path)  # re-read under the lock: another writer may have won
            updated = change(current.store.with_images())  # the pixels go on to the new bundle
            encoder_file = current.folder / bundle.ENCODER_FILE
            report = current.folder / bundle.TRAINING_FILE
            folder = bundle.publish(
                self.path,
                lambda into: bundle.write_bundle(
                    into, updated.write, encoder_file, report if report.exists() else None
                ),
                force=True,
                must_exist=True,
            )
            updated.manifest = bundle.read_manifest(folder)
        self.folder, self.store, self._partition = folder, updated, None
