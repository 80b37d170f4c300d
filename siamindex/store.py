"""``IndexStore``: a FAISS index with its per-row metadata, in memory, and its two files.

The store reads and writes ``index.faiss`` and ``metadata.h5`` inside a bundle folder; where that
folder is, how it is verified and published, is ``bundle``'s business. This module sees arrays
only: no images, no Keras.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import graphs
from siamindex.bundle import (
    CLASS_GRAPHS_FILE,
    FAISS_FILE,
    KNOWN_FORMAT_VERSIONS,
    METADATA_FILE,
    REBUILD,
)
from siamindex.errors import BadIndexType, BadSearchSetting, IncompatibleIndex
from siamindex.facts import IndexFacts
from siamindex.metadata import write_header, write_rows
from siamindex.search import hnsw_parameters, ivf_parameters

TRAINING_SAMPLE = 50_000  # vectors an index type that needs training is trained on, at most


def faiss_spec(index_type: str) -> str:
    """FAISS ``index_factory`` string for an index type ("flat" means exact search)."""
    return "Flat" if index_type.strip().lower() == "flat" else index_type.strip()


def new_faiss_index(embedding_dim: int, index_type: str) -> Any:
    """An empty FAISS index of ``index_type`` that stores our ids (an IDMap2 around it).

    Raises:
        BadIndexType: FAISS does not understand the type.
    """
    import faiss

    spec = faiss_spec(index_type)
    try:
        return faiss.index_factory(embedding_dim, f"IDMap2,{spec}", faiss.METRIC_L2)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise BadIndexType(
            f"FAISS rejects index type '{index_type}' ({detail[:160]}); use 'flat' or an "
            "index_factory string such as 'IVF256,Flat' or 'HNSW32'."
        ) from None


def build_faiss_index(embeddings: np.ndarray, ids: np.ndarray, index_type: str, seed: int) -> Any:
    """A FAISS index of ``index_type`` holding (n, embedding_dim) ``embeddings`` under ``ids``.

    Index types that need training are trained on up to 50,000 vectors sampled with ``seed``.

    Raises:
        BadIndexType: FAISS rejects the type, or there are too few vectors to train it.
    """
    index = new_faiss_index(embeddings.shape[1], index_type)
    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        size = min(len(vectors), TRAINING_SAMPLE)
        sample = vectors[np.sort(rng.choice(len(vectors), size, replace=False))]
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise BadIndexType(
                f"FAISS cannot train index type '{index_type}' on {len(sample)} vectors "
                f"({str(exc).strip().splitlines()[-1][:120]}); use fewer lists or 'flat'."
            ) from None
    index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))
    return index


def index_kind(index: Any) -> str:
    """ "ivf", "hnsw" or "other": which search settings a FAISS index (or its IDMap2) takes."""
    import faiss

    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    if isinstance(inner, faiss.IndexIVF):
        return "ivf"
    return "hnsw" if hasattr(inner, "hnsw") else "other"


def search_parameters(
    index: Any,
    nprobe: int | None,
    ef_search: int | None,
    index_type: str = "?",
    kind: str | None = None,
) -> Any:
    """FAISS search parameters for one call, or None; the shared index is never changed.

    ``index_type`` names the index in errors, as the user gave it at build time; ``kind``
    (``index_kind(index)``) saves looking it up again.

    Raises:
        BadSearchSetting: a setting does not apply to the index's type.
    """
    if nprobe is None and ef_search is None:
        return None
    if nprobe is not None and ef_search is not None:
        raise BadSearchSetting("Give nprobe (IVF index types) or ef_search (HNSW), not both.")
    kind = kind or index_kind(index)
    if nprobe is not None:
        if kind != "ivf":
            raise BadSearchSetting(
                f"nprobe applies to IVF index types only; this index is '{index_type}'."
            )
        return ivf_parameters(int(nprobe))
    if kind != "hnsw":
        raise BadSearchSetting(
            f"ef_search applies to HNSW index types only; this index is '{index_type}'."
        )
    return hnsw_parameters(int(ef_search))  # type: ignore[arg-type]


@dataclass
class Rows:
    """One entry per stored image, in id order.

    Attributes:
        ids: (n,) int64 stable ids, increasing.
        labels: (n,) int64 class index into the store's class_names.
        split: (n,) str, e.g. "train", "test", "added".
        source_index: (n,) int64 row of the image in its source (-1 when added by hand).
        image_sha256: (n,) str hex digest of the 28x28 uint8 image bytes.
        embeddings: (n, embedding_dim) float32.
        images: (n, 28, 28) uint8 pixels, when in memory (``IndexStore.with_images``); None
            when not read (or not kept, in bundles built before they were).
    """

    ids: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    source_index: np.ndarray
    image_sha256: np.ndarray
    embeddings: np.ndarray
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows: np.ndarray) -> Rows:
        images = None if self.images is None else self.images[rows]
        return Rows(**{name: getattr(self, name)[rows] for name in _ROW_FIELDS}, images=images)

    def concat(self, other: Rows) -> Rows:
        """These rows, then ``other``'s; pixels only when both carry them."""
        images = None
        if self.images is not None and other.images is not None:
            images = np.concatenate([self.images, other.images])
        parts = {n: np.concatenate([getattr(self, n), getattr(other, n)]) for n in _ROW_FIELDS}
        return Rows(**parts, images=images)


_ROW_FIELDS = ("ids", "labels", "split", "source_index", "image_sha256", "embeddings")


def image_hashes(images: np.ndarray) -> np.ndarray:
    """SHA-256 hex digest of each (28, 28) uint8 image's bytes: (n,) str."""
    import hashlib

    images = np.ascontiguousarray(images, dtype=np.uint8)
    return np.array([hashlib.sha256(image.tobytes()).hexdigest() for image in images])


@dataclass
class IndexStore:
    """A FAISS index with its metadata, in memory.

    Attributes:
        index: the FAISS index (an IDMap2 whose ids are ``rows.ids``).
        rows: the per-image metadata and embeddings.
        class_names: name of each class (a row's label is a position in it).
        class_thresholds: (num_classes,) float64 per-class thresholds (NaN: none calibrated).
        facts: everything else the index records about itself.
        probability: (2, m) float64 breakpoints of the calibrated membership probability
            (``evaluation.membership_probability``); None in bundles built before it.
        manifest: the bundle's verified manifest, when read from disk.
        images_file: the metadata file that holds the stored images' pixels, which are read
            only when asked for (``image_rows``, ``with_images``); None when it holds none.
        class_graphs: HNSW index types: the graph per class read or kept up to date so far
            (``class_graph_map`` completes it); None when there are none yet.
    """

    index: Any
    rows: Rows
    class_names: tuple[str, ...]
    class_thresholds: np.ndarray
    facts: IndexFacts
    probability: np.ndarray | None = None
    manifest: dict[str, Any] | None = None
    images_file: Path | None = None
    class_graphs: graphs.Graphs | None = None

    def with_images(self) -> IndexStore:
        """A copy with every stored image's pixels in memory (writers need them all)."""
        if self.rows.images is not None or self.images_file is None:
            return self
        import h5py

        with h5py.File(self.images_file, "r") as handle:
            pixels = handle["images"][()].astype(np.uint8)
        return replace(self, rows=replace(self.rows, images=pixels))

    def image_rows(self, rows: np.ndarray) -> np.ndarray | None:
        """The (len(rows), 28, 28) uint8 pixels of stored rows, or None if none are kept."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.rows.images is not None:
            return np.asarray(self.rows.images[rows])
        if self.images_file is None:
            return None
        import h5py

        order = np.unique(rows)  # h5py reads increasing indices
        with h5py.File(self.images_file, "r") as handle:
            found = handle["images"][order].astype(np.uint8)
        return np.asarray(found[np.searchsorted(order, rows)])

    @functools.cached_property
    def kind(self) -> str:
        """``index_kind`` of the FAISS index, looked up once (a copy looks it up again)."""
        return index_kind(self.index)

    @functools.cached_property
    def class_graph_map(self) -> graphs.Graphs:
        """HNSW index types: an HNSW graph per stored class (``graphs``), those the store lacks
        built once, with the index's own M."""
        m = graphs.width(self.index)
        return graphs.complete(self.class_graphs, self.rows.embeddings, self.rows.labels, m)

    @functools.cached_property
    def class_counts(self) -> np.ndarray:
        """(num_classes,) stored images of each class, counted once (a copy counts again)."""
        return np.bincount(self.rows.labels, minlength=len(self.class_names))

    @property
    def embedding_dim(self) -> int:
        return int(self.rows.embeddings.shape[1])

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest stored vectors of each query.

        Args:
            queries: (n, embedding_dim) float32.
            k: neighbours per query, 1 <= k <= count.
            nprobe: IVF cells to visit (IVF index types only), for this call only.
            ef_search: HNSW search breadth (HNSW index types only, at least k), for this call
                only.

        Returns:
            (distances, ids): (n, k) float32 Euclidean distances, nearest first (inf where the
            index found fewer than k), and (n, k) int64 ids (-1 there).

        Raises:
            BadSearchSetting: a setting does not apply to this index type, or ef_search < k.
        """
        if not 1 <= k <= len(self.rows):
            raise ValueError(f"k must be between 1 and the index size {len(self.rows)}, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embedding_dim:
            raise ValueError(
                f"queries have shape {queries.shape}; expected (n, {self.embedding_dim})"
            )
        if ef_search is not None and ef_search < k:
            raise BadSearchSetting(
                f"ef_search {ef_search} is below k {k}: HNSW would return fewer than k "
                f"neighbours for some queries; use ef_search >= {k}."
            )
        kind = self.kind if nprobe is not None or ef_search is not None else None
        params = search_parameters(self.index, nprobe, ef_search, self.facts.index_type, kind)
        squared, ids = self.index.search(queries, k, params=params)
        found = ids >= 0
        return np.where(found, np.sqrt(np.maximum(squared, 0)), np.inf).astype(np.float32), ids

    def rows_of(self, ids: np.ndarray) -> np.ndarray:
        """Row positions of stored ids.

        Raises:
            KeyError: an id is not stored.
        """
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.rows.ids, ids)
        rows = np.minimum(rows, len(self.rows) - 1)
        missing = ids[self.rows.ids[rows] != ids] if len(self.rows) else ids
        if missing.size:
            raise KeyError(", ".join(str(i) for i in missing[:10]))
        return rows

    def with_class(self, class_name: str) -> IndexStore:
        """A copy that knows ``class_name`` (with no threshold of its own yet)."""
        if class_name in self.class_names:
            return self
        return replace(
            self,
            class_names=(*self.class_names, class_name),
            class_thresholds=np.append(self.class_thresholds, np.nan),
        )

    def add(self, new: Rows) -> IndexStore:
        """A copy with ``new`` appended; their ids are replaced by fresh ones, never reused."""
        import faiss

        start = self.facts.next_id
        new = replace(new, ids=np.arange(start, start + len(new), dtype=np.int64))
        index = faiss.clone_index(self.index)
        index.add_with_ids(np.ascontiguousarray(new.embeddings, dtype=np.float32), new.ids)
        facts = replace(self.facts, next_id=start + len(new))
        added = graphs.extended(self.class_graphs, new.embeddings, new.labels)
        return replace(
            self, index=index, rows=self.rows.concat(new), facts=facts, class_graphs=added
        )

    def relabel(self, rows: np.ndarray, label: int) -> IndexStore:
        """A copy with the given row positions labelled ``label`` (vectors and ids unchanged)."""
        labels = self.rows.labels.copy()
        changed = graphs.without(self.class_graphs, [*labels[np.asarray(rows, np.int64)], label])
        labels[np.asarray(rows, dtype=np.int64)] = label
        return replace(self, rows=replace(self.rows, labels=labels), class_graphs=changed)

    def remove(self, ids: np.ndarray) -> IndexStore:
        """A copy without the given ids (which must be stored). Other ids do not change."""
        import faiss

        rows = self.rows_of(ids)
        keep = np.ones(len(self.rows), dtype=bool)
        keep[rows] = False
        remaining = self.rows.take(np.flatnonzero(keep))
        index = faiss.clone_index(self.index)
        try:
            index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        except RuntimeError:  # e.g. HNSW cannot remove: rebuild from the stored embeddings
            index = build_faiss_index(
                remaining.embeddings, remaining.ids, self.facts.index_type, seed=0
            )
        kept = graphs.without(self.class_graphs, self.rows.labels[rows])
        return replace(self, index=index, rows=remaining, class_graphs=kept)

    # -- files -------------------------------------------------------------------------------

    def write(self, folder: Path) -> None:
        """Write ``index.faiss`` and ``metadata.h5`` (and, for HNSW types, ``classes.h5``) into
        ``folder`` (which must exist)."""
        import faiss
        import h5py

        faiss.write_index(self.index, str(folder / FAISS_FILE))
        if self.kind == "hnsw":
            graphs.write(folder / CLASS_GRAPHS_FILE, self.class_graph_map)
        with h5py.File(folder / METADATA_FILE, "w") as handle:
            write_rows(handle, len(self.rows), self.embedding_dim, self.rows.images is not None)(
                0, {field: getattr(self.rows, field) for field in _ROW_FIELDS}, self.rows.images
            )
            write_header(
                handle,
                self.class_names,
                self.class_thresholds,
                self.probability,
                self.facts,
                len(self.rows),
            )

    @classmethod
    def read(cls, folder: Path, manifest: dict[str, Any] | None = None) -> IndexStore:
        """Read a bundle folder's index and metadata (its files already verified).

        Checks, each with its own error: known format version; FAISS ntotal equal to the
        metadata row count; index and metadata dimensions equal.

        Raises:
            IncompatibleIndex: any check fails.
        """
        import faiss

        rows, class_names, thresholds, facts, probability, has_images = _read_metadata(
            folder / METADATA_FILE
        )
        if facts.format_version not in KNOWN_FORMAT_VERSIONS:
            raise IncompatibleIndex(
                f"Index '{folder}' has format version {facts.format_version}; this siamindex "
                f"reads {', '.join(map(str, KNOWN_FORMAT_VERSIONS))}. Upgrade siamindex or "
                "rebuild it."
            )
        try:
            index = faiss.read_index(str(folder / FAISS_FILE))
        except RuntimeError as exc:
            raise IncompatibleIndex(
                f"FAISS cannot read '{folder / FAISS_FILE}' ({str(exc).strip()[:120]}); {REBUILD}."
            ) from None
        if index.ntotal != len(rows):
            raise IncompatibleIndex(
                f"Index '{folder}' is inconsistent: FAISS holds {index.ntotal} vectors but the "
                f"metadata has {len(rows)} rows; {REBUILD}."
            )
        if index.d != rows.embeddings.shape[1]:
            raise IncompatibleIndex(
                f"Index '{folder}' has mismatched dimensions (FAISS index {index.d}-d, metadata "
                f"embeddings {rows.embeddings.shape[1]}-d); rebuild it with its encoder: "
                "`siamindex build-index --encoder PATH --force`."
            )
        images_file = folder / METADATA_FILE if has_images else None
        graphs_file = folder / CLASS_GRAPHS_FILE  # verified when the manifest lists it
        class_graphs = graphs.read(graphs_file) if graphs_file.is_file() else None
        return cls(
            index, rows, class_names, thresholds, facts, probability, manifest, images_file,
            class_graphs,
        )  # fmt: skip


def _read_metadata(
    path: Path,
) -> tuple[Rows, tuple[str, ...], np.ndarray, IndexFacts, np.ndarray | None, bool]:
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            attrs: dict[str, Any] = {}
            for key, value in handle.attrs.items():
                value = value.item() if isinstance(value, np.generic) else value
                if isinstance(value, str) and value[:1] in "{[":
                    value = json.loads(value)
                attrs[key] = value
            rows = Rows(
                ids=handle["ids"][()].astype(np.int64),
                labels=handle["labels"][()].astype(np.int64),
                split=handle["split"].asstr()[()].astype(str),
                source_index=handle["source_index"][()].astype(np.int64),
                image_sha256=handle["image_sha256"][()].astype(str),
                embeddings=handle["embeddings"][()].astype(np.float32),
            )
            class_names = tuple(handle["class_names"].asstr()[()])
            thresholds = (
                handle["class_thresholds"][()]
                if "class_thresholds" in handle
                else np.full(len(class_names), np.nan)
            )
            probability = (
                handle["membership_probability"][()].astype(np.float64)
                if "membership_probability" in handle
                else None
            )
            has_images = "images" in handle and handle["images"].shape[0] == len(rows)
        facts = IndexFacts.from_attrs(attrs)
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise IncompatibleIndex(
            f"Metadata '{path}' is unreadable or incomplete ({str(exc)[:120]}); rebuild the index."
        ) from None
    return rows, class_names, thresholds, facts, probability, has_images
