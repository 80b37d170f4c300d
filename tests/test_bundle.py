"""The bundle on disk: name resolution, manifest verification, atomic publication, the lock."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from siamindex import bundle
from siamindex.bundle import (
    ENCODER_FILE,
    FAISS_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    index_path,
    publish,
    verify_files,
    writer_lock,
)
from siamindex.errors import DataError, IncompatibleIndex, IndexExists, IndexLocked, IndexNotFound
from siamindex.index import Index


def test_index_names_and_paths(monkeypatch, tmp_path):
    monkeypatch.delenv("SIAMINDEX_INDEXES", raising=False)
    assert index_path("mnist") == Path("indexes/mnist")
    monkeypatch.setenv("SIAMINDEX_INDEXES", str(tmp_path))
    assert index_path("digits") == tmp_path / "digits"
    assert index_path("some/where/idx") == Path("some/where/idx")
    for bad, message in (("", "not an index name"), ("..", "not an index name"), (".x", "dot")):
        with pytest.raises(DataError, match=message):
            index_path(bad)


def _copy(index: Index, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(index.folder, copy)
    return copy


def _rewrite_manifest(folder: Path) -> None:
    (folder / MANIFEST_FILE).unlink()
    bundle._write_manifest(folder)


def test_a_published_bundle_verifies(fake_index):
    manifest = verify_files(fake_index.folder)
    assert set(manifest["files"]) == {ENCODER_FILE, FAISS_FILE, METADATA_FILE}
    assert fake_index.path.is_symlink() and fake_index.path.resolve() == fake_index.folder


def test_truncated_file_is_detected(fake_index, tmp_path):
    folder = _copy(fake_index, tmp_path)
    data = (folder / FAISS_FILE).read_bytes()
    (folder / FAISS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompatibleIndex, match="truncated or replaced"):
        verify_files(folder)


@pytest.mark.parametrize("name", [FAISS_FILE, METADATA_FILE])
def test_flipped_byte_is_detected(fake_index, tmp_path, name):
    folder = _copy(fake_index, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(IncompatibleIndex, match=f"{name} fails its SHA-256 check"):
        verify_files(folder)


def test_flipped_byte_in_manifest_is_detected(fake_index, tmp_path):
    folder = _copy(fake_index, tmp_path)
    data = bytearray((folder / MANIFEST_FILE).read_bytes())
    data[40] ^= 0x04
    (folder / MANIFEST_FILE).write_bytes(bytes(data))
    with pytest.raises(IncompatibleIndex, match="Manifest .* is damaged"):
        verify_files(folder)


def test_missing_file_is_detected(fake_index, tmp_path):
    folder = _copy(fake_index, tmp_path)
    (folder / METADATA_FILE).unlink()
    with pytest.raises(IncompatibleIndex, match="is missing metadata.h5"):
        verify_files(folder)


def test_swapped_encoder_is_detected(fake_index, tmp_path):
    folder = _copy(fake_index, tmp_path)
    same_size = len((folder / ENCODER_FILE).read_bytes())
    (folder / ENCODER_FILE).write_bytes(b"x" * same_size)  # another encoder, same size
    with pytest.raises(IncompatibleIndex, match="not the encoder this index was built with"):
        Index.open(folder)
    # Even with the manifest rewritten to match, the metadata's fingerprint gives it away.
    _rewrite_manifest(folder)
    with pytest.raises(IncompatibleIndex, match="other than the one it was built with"):
        Index.open(folder)


def test_missing_index_and_file_in_its_place(tmp_path):
    with pytest.raises(IndexNotFound, match="build one with `siamindex build-index --index idx`"):
        bundle.resolve_bundle(tmp_path / "idx")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(IndexNotFound, match="is a file, not an index folder"):
        bundle.resolve_bundle(tmp_path / "afile")


def _write_marker(text: str):
    def write(folder: Path) -> None:
        (folder / "marker").write_text(text)

    return write


def test_publish_swaps_the_link_and_keeps_the_previous_bundle(tmp_path):
    target = tmp_path / "idx"
    with writer_lock(target):
        first = publish(target, _write_marker("one"), force=False)
        with pytest.raises(IndexExists, match="pass --force"):
            publish(target, _write_marker("two"), force=False)
        second = publish(target, _write_marker("two"), force=True)
        third = publish(target, _write_marker("three"), force=True)
    assert (target / "marker").read_text() == "three" and target.resolve() == third
    # The bundle just replaced stays for readers still on it; older ones are pruned.
    assert second.is_dir() and not first.exists()


def test_publish_needs_an_existing_index_for_changes(tmp_path):
    with writer_lock(tmp_path / "idx"), pytest.raises(IndexNotFound):
        publish(tmp_path / "idx", _write_marker("x"), force=True, must_exist=True)


def test_a_failed_write_leaves_nothing_and_partials_are_cleaned(tmp_path):
    target = tmp_path / "idx"

    def fail(folder: Path) -> None:
        (folder / "half").write_text("half-written")
        raise RuntimeError("disk full")

    with writer_lock(target):
        publish(target, _write_marker("one"), force=False)
        with pytest.raises(RuntimeError, match="disk full"):
            publish(target, fail, force=True)
    assert (target / "marker").read_text() == "one"
    assert not list(tmp_path.glob("*.partial"))
    # A partial folder left by a killed writer is removed by the next writer.
    stray = tmp_path / ".idx@19990101T000000.000000000-1.partial"
    stray.mkdir()
    with writer_lock(target):
        publish(target, _write_marker("two"), force=True)
    assert not stray.exists()


def test_one_writer_at_a_time(tmp_path):
    with writer_lock(tmp_path / "idx"):
        with pytest.raises(IndexLocked, match="is being changed by pid \\d+; one writer at a time"):
            with writer_lock(tmp_path / "idx"):
                pass
    with writer_lock(tmp_path / "idx"):  # released
        pass
