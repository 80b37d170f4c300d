"""The index bundle on disk: where a name points, the manifest, verification, atomic publication
and the one-writer lock.

A bundle is a folder::

    encoder.keras   the encoder that made the vectors
    index.faiss     the FAISS index; its ids are the stable row ids
    metadata.h5     per-row datasets and the index's facts (see ``store`` and ``facts``)
    training.json   the encoder's training report, when there is one
    manifest.json   SHA-256 and size of the files above, written last, self-checksummed

An index *name* such as ``indexes/mnist`` is a symbolic link to a complete bundle folder beside it
(``indexes/.mnist@<stamp>``). Writers build a new bundle in a ``.partial`` folder, fsync it, rename
it complete, and then swap the link with one atomic ``rename``; readers resolve the link once and
so see either the old bundle or the new one, never a mix. A crash leaves at most a ``.partial``
folder, which is never opened and is removed by the next writer. One writer at a time: writers
hold an ``flock`` on ``.<name>.lock`` and a second one gets ``IndexLocked``.

This module moves files; it never opens FAISS or HDF5 (that is ``store``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from siamindex.data import sha256_file
from siamindex.defaults import INDEXES_ENV
from siamindex.errors import DataError, IncompatibleIndex, IndexExists, IndexLocked, IndexNotFound

FORMAT_VERSION = 1
KNOWN_FORMAT_VERSIONS = (1,)
ENCODER_FILE = "encoder.keras"
FAISS_FILE = "index.faiss"
METADATA_FILE = "metadata.h5"
MANIFEST_FILE = "manifest.json"
TRAINING_FILE = "training.json"
CLASS_GRAPHS_FILE = "classes.h5"  # HNSW index types: a graph per class (siamindex.graphs)
BUNDLE_FILES = (ENCODER_FILE, FAISS_FILE, METADATA_FILE)
OPTIONAL_FILES = (TRAINING_FILE, CLASS_GRAPHS_FILE)
PARTIAL_SUFFIX = ".partial"
REBUILD = "rebuild it with `siamindex build-index --force`"

# The named points of the write path, in order. Before "link-swapped" a crash leaves the old
# bundle published; from it on, the new one.
WRITE_POINTS = ("partial-created", "store-written", "bundle-complete", "link-swapped", "pruned")
PAUSE_ENV = "SIAMINDEX_TEST_PAUSE"


def _checkpoint(point: str) -> None:
    """Test hook: with ``$SIAMINDEX_TEST_PAUSE`` set to "POINT[,POINT...]:FILE", a writer that
    reaches a listed point writes "POINT PID" to FILE and waits while FILE exists, so that a
    test can kill it exactly there (or let readers run) and then delete FILE to let it go on.
    Unset (always, outside tests), this is one dictionary lookup."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    points, _, marker = spec.rpartition(":")
    if point not in points.split(","):
        return
    ready = Path(f"{marker}.{os.getpid()}")
    ready.write_text(f"{point} {os.getpid()}")
    os.replace(ready, marker)  # whole, so that a test never reads it half-written
    while os.path.exists(marker):
        time.sleep(0.005)


def index_path(name: str | os.PathLike[str]) -> Path:
    """Where an index lives: a name like "mnist" is ``$SIAMINDEX_INDEXES/mnist`` (default
    ``./indexes/mnist``); anything with a path separator is taken as a path.

    Raises:
        DataError: the name is empty, "." or "..", or starts with a dot.
    """
    text = os.fspath(name)
    if not text or text in (".", ".."):
        raise DataError(f"'{text}' is not an index name; use a name such as mnist.")
    if os.sep in text or (os.altsep and os.altsep in text):
        return Path(text)
    if text.startswith("."):
        raise DataError(f"Index name '{text}' may not start with a dot; those names are internal.")
    return Path(os.environ.get(INDEXES_ENV, "indexes")) / text


def write_bundle(
    folder: Path,
    write_store: Callable[[Path], None],
    encoder_file: Path,
    training_report: Path | None = None,
) -> None:
    """Fill an empty bundle folder: the encoder, the report, the store's files, then the
    manifest, every file fsynced.

    Args:
        folder: the (``.partial``) folder to fill.
        write_store: writes the FAISS index and metadata into the folder.
        encoder_file: the encoder the vectors came from.
        training_report: the encoder's JSON training report, kept when given.
    """
    shutil.copyfile(encoder_file, folder / ENCODER_FILE)
    if training_report is not None:
        shutil.copyfile(training_report, folder / TRAINING_FILE)
    write_store(folder)
    _checkpoint("store-written")
    for name in (*BUNDLE_FILES, *OPTIONAL_FILES):
        if (folder / name).exists():
            _fsync_file(folder / name)
    _write_manifest(folder)
    _fsync_dir(folder)


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
            f"No index at '{target}'; build one with `siamindex build-index --index {target.name}`."
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


def adopt(target: Path) -> None:
    """Turn a plain bundle folder at ``target`` (copied in by hand) into a version behind a
    link, as writers keep them; nothing happens to a link. The caller holds the writer lock.

    Readers that resolve the name in between see no index for a moment (two renames).
    """
    if target.is_symlink() or not target.is_dir():
        return
    version = target.parent / f".{target.name}@{_stamp()}-adopted"
    os.rename(target, version)
    link = target.parent / f".{target.name}.link-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(version.name, link)
    os.replace(link, target)
    _fsync_dir(target.parent)


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
        raise IndexNotFound(
            f"No index at '{target}'; build one with `siamindex build-index --index {target.name}`."
        )
    adopt(target)
    previous = target.resolve() if target.is_symlink() and target.exists() else None
    _clean(target, keep={previous} if previous else set())
    final = target.parent / f".{target.name}@{_stamp()}"
    partial = final.with_name(final.name + PARTIAL_SUFFIX)
    partial.mkdir(parents=True)
    try:
        _checkpoint("partial-created")
        write(partial)
        os.rename(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
    _checkpoint("bundle-complete")
    link = target.parent / f".{target.name}.link-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(final.name, link)
    os.replace(link, target)
    _fsync_dir(target.parent)
    _checkpoint("link-swapped")
    # Keep the bundle just replaced: a reader may have resolved the link a moment ago.
    _clean(target, keep={final.resolve()} | ({previous} if previous else set()))
    _checkpoint("pruned")
    return final


def _stamp() -> str:
    now = time.time_ns()
    return (
        f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime(now / 1e9))}.{now % 10**9:09d}-{os.getpid()}"
    )
