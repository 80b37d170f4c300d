"""The index bundle on disk: a FAISS index, HDF5 metadata, the encoder, and a manifest.

A bundle is a folder::

    encoder.keras   the encoder that made the vectors
    index.faiss     the FAISS index; its ids are the stable row ids
    metadata.h5     datasets ids, labels, split, source_index, image_sha256, embeddings,
                    class_names, class_thresholds; attrs hold the scalar facts
    manifest.json   SHA-256 and size of the three files above, written last, self-checksummed

An index *name* such as ``indexes/mnist`` is a symbolic link to a complete bundle folder beside it
(``indexes/.mnist@<stamp>``). Writers build a new bundle in a ``.partial`` folder, fsync it, rename
it complete, and then swap the link with one atomic ``rename``; readers resolve the link once and
so see either the old bundle or the new one, never a mix. A crash leaves at most a ``.partial``
folder, which is never opened and is removed by the next writer. One writer at a time: writers
hold an ``flock`` on ``.<name>.lock`` and a second one gets ``IndexLocked``.

This module sees arrays only: no images, no Keras.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from siamindex.data import sha256_file
from siamindex.errors import IncompatibleIndex, IndexExists, IndexLocked, IndexNotFound

FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = (1,)
ENCODER_FILE = "encoder.keras"
FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.h5"
MANIFEST_FILE = "manifest.json"
TRAINING_FILE = "training.json"
BUNDLE_FILES = (ENCODER_FILE, FAISS_FILE, METADATA_FILE)
OPTIONAL_FILES = (TRAINING_FILE,)
PARTIAL_SUFFIX = ".partial"
TRAINING_SAMPLE = 50_000
REBUILD = "rebuild it with `siamindex build-index --force`"


def faiss_spec(index_type: str) -> str:
    """FAISS ``index_factory`` string for an index type ("flat" means exact search)."""
    return "Flat" if index_type.strip().lower() == "flat" else index_type.strip()


def new_faiss_index(embedding_dim: int, index_type: str):  # type: ignore[no-untyped-def]
    """An empty FAISS index of ``index_type`` that stores our ids (an IDMap2 around it).

    Raises:
        ValueError: FAISS does not understand the type.
    """
    import faiss

    spec = faiss_spec(index_type)
    try:
        return faiss.index_factory(embedding_dim, f"IDMap2,{spec}", faiss.METRIC_L2)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise ValueError(
            f"FAISS rejects index type '{index_type}' ({detail[:160]}); use 'flat' or an "
            "index_factory string such as 'IVF256,Flat' or 'HNSW32'."
        ) from None


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
    """

    ids: np.ndarray
    labels: np.ndarray
    split: np.ndarray
    source_index: np.ndarray
    image_sha256: np.ndarray
    embeddings: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def take(self, rows: np.ndarray) -> Rows:
        return Rows(*(getattr(self, name)[rows] for name in _ROW_FIELDS))

    def concat(self, other: Rows) -> Rows:
        return Rows(*(np.concatenate([getattr(self, n), getattr(other, n)]) for n in _ROW_FIELDS))


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
        class_names: name of each class index.
        class_thresholds: (num_classes,) float64 per-class thresholds (NaN: none calibrated).
        attrs: scalar facts (see the module docstring and ``IndexStore.info``).
        manifest: the bundle's verified manifest, when read from disk.
    """

    index: Any
    rows: Rows
    class_names: tuple[str, ...]
    class_thresholds: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)  # as verified when read

    @property
    def embedding_dim(self) -> int:
        return int(self.rows.embeddings.shape[1])

    @property
    def threshold(self) -> float:
        return float(self.attrs["threshold"])

    @classmethod
    def create(
        cls,
        rows: Rows,
        class_names: Sequence[str],
        index_type: str = "flat",
        attrs: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> IndexStore:
        """Build a FAISS index of ``index_type`` over ``rows.embeddings``.

        Index types that need training are trained on up to 50,000 rows sampled with ``seed``.

        Raises:
            ValueError: FAISS rejects the type, or there are too few rows to train it.
        """
        index = _filled_index(rows, index_type, seed)
        thresholds = np.full(len(class_names), np.nan)
        attrs = {
            "index_type": index_type,
            "next_id": int(rows.ids.max(initial=-1)) + 1,
            **(attrs or {}),
        }
        return cls(index, rows, tuple(class_names), thresholds, attrs)

    def search(
        self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest stored vectors of each query.

        Args:
            queries: (n, embedding_dim) float32.
            k: neighbours per query, 1 <= k <= count.
            nprobe: IVF cells to visit (IVF index types only).
            ef_search: HNSW search breadth (HNSW index types only).

        Returns:
            (distances, ids): (n, k) float32 Euclidean distances, nearest first (inf where the
            index found fewer than k), and (n, k) int64 ids (-1 there).
        """
        import faiss

        if not 1 <= k <= len(self.rows):
            raise ValueError(f"k must be between 1 and the index size {len(self.rows)}, got {k}")
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.embedding_dim:
            raise ValueError(
                f"queries have shape {queries.shape}; expected (n, {self.embedding_dim})"
            )
        space = faiss.ParameterSpace()
        for name, value in (("nprobe", nprobe), ("efSearch", ef_search)):
            if value is not None:
                try:
                    space.set_index_parameter(self.index, name, int(value))
                except RuntimeError:
                    raise ValueError(
                        f"{name} does not apply to index type '{self.attrs.get('index_type')}'"
                    ) from None
        squared, ids = self.index.search(queries, k)
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

    def add(self, new: Rows) -> IndexStore:
        """A copy with ``new`` appended; their ids are replaced by fresh ones, never reused."""
        start = int(self.attrs["next_id"])
        new = replace(new, ids=np.arange(start, start + len(new), dtype=np.int64))
        index = _clone(self.index)
        index.add_with_ids(np.ascontiguousarray(new.embeddings, dtype=np.float32), new.ids)
        attrs = {**self.attrs, "next_id": start + len(new)}
        return replace(self, index=index, rows=self.rows.concat(new), attrs=attrs)

    def remove(self, ids: np.ndarray) -> IndexStore:
        """A copy without the given ids (which must be stored). Other ids do not change."""
        import faiss

        rows = self.rows_of(ids)
        keep = np.ones(len(self.rows), dtype=bool)
        keep[rows] = False
        remaining = self.rows.take(np.flatnonzero(keep))
        index = _clone(self.index)
        try:
            index.remove_ids(faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64)))
        except RuntimeError:  # e.g. HNSW cannot remove: rebuild from the stored embeddings
            index = _filled_index(remaining, str(self.attrs["index_type"]), 0)
        return replace(self, index=index, rows=remaining)

    # -- files -------------------------------------------------------------------------------

    def write(self, folder: Path, encoder_file: Path, training_report: Path | None = None) -> None:
        """Write the bundle's files into ``folder`` (which must exist), manifest last, fsynced.

        ``training_report`` (the encoder's JSON training report) is kept when given.
        """
        import faiss

        shutil.copyfile(encoder_file, folder / ENCODER_FILE)
        if training_report is not None:
            shutil.copyfile(training_report, folder / TRAINING_FILE)
        faiss.write_index(self.index, str(folder / FAISS_FILE))
        self._write_metadata(folder / METADATA_FILE)
        for name in (*BUNDLE_FILES, *OPTIONAL_FILES):
            if (folder / name).exists():
                _fsync_file(folder / name)
        _write_manifest(folder)
        _fsync_dir(folder)

    def _write_metadata(self, path: Path) -> None:
        import h5py

        strings = h5py.string_dtype()
        with h5py.File(path, "w") as handle:
            handle.create_dataset("ids", data=self.rows.ids)
            handle.create_dataset("labels", data=self.rows.labels)
            handle.create_dataset("split", data=self.rows.split.astype(object), dtype=strings)
            handle.create_dataset("source_index", data=self.rows.source_index)
            handle.create_dataset("image_sha256", data=self.rows.image_sha256.astype("S64"))
            handle.create_dataset("embeddings", data=self.rows.embeddings, dtype=np.float32)
            handle.create_dataset("class_names", data=list(self.class_names), dtype=strings)
            handle.create_dataset("class_thresholds", data=self.class_thresholds)
            for key, value in {
                **self.attrs,
                "format_version": FORMAT_VERSION,
                "count": len(self.rows),
            }.items():
                handle.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value

    @classmethod
    def read(cls, folder: Path, expected_embedding_dim: int | None = None) -> IndexStore:
        """Read and verify a bundle folder.

        Checks, each with its own error: manifest intact; every file present, of the right
        size and SHA-256; known format version; FAISS ntotal equal to the metadata row count;
        dimensions of index, metadata and (if given) encoder equal.

        Raises:
            IncompatibleIndex: any check fails.
        """
        import faiss

        manifest = verify_files(folder)
        rows, class_names, thresholds, attrs = _read_metadata(folder / METADATA_FILE)
        version = attrs.get("format_version")
        if version not in KNOWN_FORMAT_VERSIONS:
            raise IncompatibleIndex(
                f"Index '{folder}' has format version {version}; this siamindex reads "
                f"{', '.join(map(str, KNOWN_FORMAT_VERSIONS))}. Upgrade siamindex or rebuild it."
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
        dims = {"FAISS index": index.d, "metadata embeddings": rows.embeddings.shape[1]}
        if expected_embedding_dim is not None:
            dims["encoder output"] = expected_embedding_dim
        if len(set(dims.values())) > 1:
            said = ", ".join(f"{name} {dim}-d" for name, dim in dims.items())
            raise IncompatibleIndex(
                f"Index '{folder}' has mismatched dimensions ({said}); rebuild it with its "
                "encoder: `siamindex build-index --encoder PATH --force`."
            )
        return cls(index, rows, class_names, thresholds, attrs, manifest)


def _filled_index(rows: Rows, index_type: str, seed: int):  # type: ignore[no-untyped-def]
    index = new_faiss_index(rows.embeddings.shape[1], index_type)
    vectors = np.ascontiguousarray(rows.embeddings, dtype=np.float32)
    if not index.is_trained:
        rng = np.random.default_rng(seed)
        sample = vectors[
            np.sort(rng.choice(len(vectors), min(len(vectors), TRAINING_SAMPLE), replace=False))
        ]
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise ValueError(
                f"FAISS cannot train index type '{index_type}' on {len(sample)} vectors "
                f"({str(exc).strip().splitlines()[-1][:120]}); use fewer lists or 'flat'."
            ) from None
    index.add_with_ids(vectors, rows.ids)
    return index


def _clone(index: Any) -> Any:
    import faiss

    return faiss.clone_index(index)


def _read_metadata(path: Path) -> tuple[Rows, tuple[str, ...], np.ndarray, dict[str, Any]]:
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
    except (OSError, KeyError, ValueError) as exc:
        raise IncompatibleIndex(
            f"Metadata '{path}' is unreadable or incomplete ({str(exc)[:120]}); rebuild the index."
        ) from None
    return rows, class_names, thresholds, attrs


# -- manifest and verification -------------------------------------------------------------


def _manifest_text(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, indent=2)


def _write_manifest(folder: Path) -> None:
    body = {
        "format_version": FORMAT_VERSION,
        "files": {
            name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
            for name in (*BUNDLE_FILES, *OPTIONAL_FILES)
            if name in BUNDLE_FILES or (folder / name).exists()
        },
    }
    text = _manifest_text({**body, "manifest_sha256": _digest(_manifest_text(body))}) + "\n"
    path = folder / MANIFEST_FILE
    path.write_text(text)
    _fsync_file(path)


def _digest(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The verified manifest of a bundle folder.

    The manifest carries the SHA-256 of its own canonical text, and its bytes must equal that
    canonical text exactly, so that any changed byte is caught.
    """
    path = folder / MANIFEST_FILE
    fix = REBUILD
    if not path.is_file():
        raise IncompatibleIndex(
            f"Index '{folder}' has no {MANIFEST_FILE}; it is incomplete: {fix}."
        )
    raw = path.read_bytes()
    try:
        parsed = json.loads(raw)
        claimed = parsed.pop("manifest_sha256")
        text = _manifest_text(parsed)
        canonical = _manifest_text({**parsed, "manifest_sha256": claimed}) + "\n"
        if claimed != _digest(text) or canonical.encode() != raw:
            raise ValueError("checksum")
        files = parsed["files"]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise IncompatibleIndex(
            f"Manifest '{path}' is damaged (fails its own checksum): {fix}."
        ) from None
    return parsed if isinstance(files, dict) else {}


def verify_files(folder: Path) -> dict[str, Any]:
    """Check every bundle file against the manifest: present, right size, right SHA-256."""
    manifest = read_manifest(folder)
    listed = [name for name in OPTIONAL_FILES if name in manifest["files"]]
    for name in (*BUNDLE_FILES, *listed):
        entry = manifest["files"].get(name)
        path = folder / name
        what = "encoder" if name == ENCODER_FILE else name
        if entry is None or not path.is_file():
            raise IncompatibleIndex(f"Index '{folder}' is missing {name}; {REBUILD}.")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise IncompatibleIndex(
                f"{path} is {size} bytes but the manifest says {entry['bytes']}: the file was "
                f"truncated or replaced; {REBUILD}."
            )
        if sha256_file(path) != entry["sha256"]:
            if name == ENCODER_FILE:
                raise IncompatibleIndex(
                    f"{path} is not the encoder this index was built with (SHA-256 differs): "
                    f"it was swapped or damaged; restore it or {REBUILD}."
                )
            raise IncompatibleIndex(
                f"{path} fails its SHA-256 check: the {what} file is damaged; {REBUILD}."
            )
    return manifest


# -- atomic publication and the writer lock ---------------------------------------------------


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def resolve_bundle(target: Path) -> Path:
    """The bundle folder an index name points at.

    Raises:
        IndexNotFound: nothing is there, or it is not a folder.
    """
    if not target.exists():
        raise IndexNotFound(
            f"No index at '{target}'; build one with `siamindex build-index --name {target.name}`."
        )
    if not target.is_dir():
        raise IndexNotFound(
            f"'{target}' is a file, not an index folder; pass an index name or folder."
        )
    return target.resolve()


@contextlib.contextmanager
def writer_lock(target: Path) -> Iterator[None]:
    """Hold the one-writer lock of an index name, or raise IndexLocked at once."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    handle = open(lock_path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise IndexLocked(
                f"Index '{target}' is being changed by {holder}; one writer at a time. "
                "Wait for it to finish and try again."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        yield
    finally:
        handle.close()


def _versions(target: Path) -> list[Path]:
    prefix = f".{target.name}@"
    return sorted(p for p in target.parent.glob(f"{prefix}*") if p.is_dir())


def _clean(target: Path, keep: set[Path]) -> None:
    """Remove leftover partial folders and all complete versions but ``keep`` (writer only)."""
    for path in _versions(target):
        if path.resolve() not in keep:
            shutil.rmtree(path, ignore_errors=True)
    for stray in target.parent.glob(f".{target.name}.link-*"):
        stray.unlink(missing_ok=True)


def publish(
    target: Path, write: Callable[[Path], None], force: bool, must_exist: bool = False
) -> Path:
    """Write a new bundle with ``write(folder)`` and make ``target`` point at it atomically.

    The caller must hold ``writer_lock(target)``.

    Args:
        target: the index name path, e.g. indexes/mnist.
        write: fills the given empty folder with the bundle files.
        force: allow replacing an existing index.
        must_exist: the change needs an existing index (add/remove).

    Returns:
        The new bundle folder.

    Raises:
        IndexExists, IndexNotFound.
    """
    exists = target.exists() or target.is_symlink()
    if exists and not force:
        raise IndexExists(
            f"Index '{target}' already exists; pass --force to replace it "
            "(the old one stays usable until the new one is complete)."
        )
    if must_exist and not exists:
        raise IndexNotFound(f"No index at '{target}'; build one with `siamindex build-index`.")
    previous = target.resolve() if target.is_symlink() and target.exists() else None
    if exists and not target.is_symlink():
        # A plain folder (copied in by hand): keep it, under a version name, until replaced.
        previous = target.parent / f".{target.name}@{_stamp()}-adopted"
        os.rename(target, previous)
    _clean(target, keep={previous} if previous else set())
    final = target.parent / f".{target.name}@{_stamp()}"
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    partial.mkdir(parents=True)
    try:
        write(partial)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    link = target.parent / f".{target.name}.link-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(final.name, link)
    os.replace(link, target)
    _fsync_dir(target.parent)
    # Keep the bundle just replaced: a reader may have resolved the link a moment ago.
    _clean(target, keep={final.resolve()} | ({previous} if previous else set()))
    return final


def _stamp() -> str:
    now = time.time_ns()
    return (
        f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now / 1e9))}.{now % 10**9:09d}-{os.getpid()}"
    )
