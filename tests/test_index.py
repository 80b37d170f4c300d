"""The index bundle: build, reopen, verify, change, survive crashes (issue: build-index)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from siamindex import model
from siamindex.errors import DataError, IncompatibleIndex, IndexExists, IndexLocked, IndexNotFound
from siamindex.index import Index
from siamindex.store import ENCODER_FILE, FAISS_FILE, MANIFEST_FILE, METADATA_FILE, writer_lock


@pytest.fixture(scope="module")
def encoder_file(tmp_path_factory):
    """An untrained but deterministic small encoder: enough to exercise the bundle."""
    import keras

    keras.utils.set_random_seed(0)
    return model.save_encoder(
        model.build_encoder("cnn", embedding_dim=8),
        tmp_path_factory.mktemp("enc") / "encoder.keras",
    )


@pytest.fixture
def built(tmp_path, encoder_file, small_idx_dir):
    return Index.build(
        tmp_path / "idx", encoder=encoder_file, data_dir=small_idx_dir, progress=False
    )


def brute_force(vectors, queries, k):
    distances = np.linalg.norm(queries[:, None, :] - vectors[None], axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


def test_build_writes_a_complete_self_describing_bundle(built, small_idx_dir):
    assert built.path.is_symlink()
    files = sorted(p.name for p in built.folder.iterdir())
    assert files == sorted([ENCODER_FILE, FAISS_FILE, METADATA_FILE, MANIFEST_FILE])
    with h5py.File(built.folder / METADATA_FILE) as handle:
        for name in ("ids", "labels", "split", "source_index", "image_sha256", "embeddings"):
            assert handle[name].shape[0] == 1300
        attrs = dict(handle.attrs)
    for key in (
        "format_version",
        "pair_threshold",
        "embedding_dim",
        "metric",
        "encoder_sha256",
        "dataset_fingerprint",
        "threshold",
        "threshold_method",
        "threshold_distance",
        "created",
        "versions",
    ):
        assert key in attrs, key
    assert attrs["threshold_distance"] == "euclidean"
    assert {"siamindex", "tensorflow", "keras", "faiss"} <= set(json.loads(attrs["versions"]))
    info = built.info()
    assert info["per_split"] == {"test": 300, "train": 1000}
    assert sum(info["per_class"].values()) == 1300
    assert info["embedding_dim"] == 8 and info["index_type"] == "flat"
    assert len(info["class_thresholds"]) == 10
    assert "leave-one-out" in info["threshold_method"]


def test_reopened_in_a_fresh_process_it_searches_like_brute_force(built, mnist_test, tmp_path):
    queries = mnist_test.images[5000:5040]
    np.save(tmp_path / "q.npy", queries)
    script = (
        "import numpy as np, sys; from siamindex.index import Index; "
        f"ix = Index.open(r'{built.path}'); v = ix.embed(np.load(r'{tmp_path / 'q.npy'}')); "
        "d, i = ix.store.search(v, 10); "
        f"np.savez(r'{tmp_path / 'out.npz'}', d=d, i=i, v=v)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    out = np.load(tmp_path / "out.npz")
    with h5py.File(built.path / METADATA_FILE) as handle:
        stored, ids = handle["embeddings"][()], handle["ids"][()]
    np.testing.assert_allclose(
        out["v"], model.embed(model.load_encoder(built.path / ENCODER_FILE), queries), atol=1e-5
    )
    want_d, want_rows = brute_force(stored, out["v"], 10)
    np.testing.assert_array_equal(out["i"], ids[want_rows])
    np.testing.assert_allclose(out["d"], want_d, atol=1e-4)


def test_add_and_remove_keep_ids_stable(built, mnist_test):
    before = built.store.rows.ids.copy()
    label_of = dict(zip(before, built.store.rows.labels, strict=True))
    new_ids = built.add(mnist_test.images[9000:9003], "7")
    np.testing.assert_array_equal(new_ids, [1300, 1301, 1302])
    built.remove([5, 1301])
    again = Index.open(built.path)
    ids = again.store.rows.ids
    assert 5 not in ids and 1301 not in ids
    np.testing.assert_array_equal(ids, np.concatenate([np.delete(before, 5), [1300, 1302]]))
    for i, label in zip(ids, again.store.rows.labels, strict=True):
        if i < 1300:
            assert label_of[i] == label
    assert again.store.rows.split[-1] == "added"
    # Removed ids are never handed out again.
    assert list(again.add(mnist_test.images[:1], "3")) == [1303]
    # Searching finds the added image by its own id.
    vectors = again.embed(mnist_test.images[9000:9001])
    _, found = again.store.search(vectors, 1)
    assert found[0, 0] == 1300


def test_add_rejects_unknown_class_unless_asked(built, mnist_test):
    with pytest.raises(DataError, match="Unknown class 'cat'"):
        built.add(mnist_test.images[:1], "cat")
    ids = built.add(mnist_test.images[:2], "cat", new_class=True)
    assert Index.open(built.path).info()["per_class"]["cat"] == 2 and len(ids) == 2


def test_remove_unknown_id(built):
    with pytest.raises(DataError, match="99999"):
        built.remove([99999])


def test_existing_index_needs_force(built, encoder_file, small_idx_dir):
    with pytest.raises(IndexExists, match="pass --force"):
        Index.build(built.path, encoder=encoder_file, data_dir=small_idx_dir, progress=False)
    rebuilt = Index.build(
        built.path,
        encoder=encoder_file,
        data_dir=small_idx_dir,
        progress=False,
        force=True,
        splits=("train",),
    )
    assert rebuilt.info()["count"] == 1000
    assert rebuilt.folder != built.folder


def test_one_writer_at_a_time(built, mnist_test):
    with writer_lock(built.path):
        with pytest.raises(IndexLocked, match="one writer at a time"):
            built.add(mnist_test.images[:1], "1")


def test_missing_index():
    with pytest.raises(IndexNotFound, match="build one with"):
        Index.open("/nonexistent/place/idx")


# -- verification: each failure its own error -------------------------------------------------


def _rewrite_manifest(folder: Path) -> None:
    from siamindex.store import _write_manifest

    (folder / MANIFEST_FILE).unlink()
    _write_manifest(folder)


def _unlocked_copy(built, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(built.folder, copy)
    return copy


def test_truncated_file_is_detected(built, tmp_path):
    folder = _unlocked_copy(built, tmp_path)
    data = (folder / FAISS_FILE).read_bytes()
    (folder / FAISS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(IncompatibleIndex, match="truncated or replaced"):
        Index.open(folder)


@pytest.mark.parametrize("name", [FAISS_FILE, METADATA_FILE])
def test_flipped_byte_is_detected(built, tmp_path, name):
    folder = _unlocked_copy(built, tmp_path)
    data = bytearray((folder / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (folder / name).write_bytes(bytes(data))
    with pytest.raises(IncompatibleIndex, match="fails its SHA-256 check"):
        Index.open(folder)


def test_flipped_byte_in_manifest_is_detected(built, tmp_path):
    folder = _unlocked_copy(built, tmp_path)
    data = bytearray((folder / MANIFEST_FILE).read_bytes())
    data[40] ^= 0x04
    (folder / MANIFEST_FILE).write_bytes(bytes(data))
    with pytest.raises(IncompatibleIndex, match="Manifest .* is damaged"):
        Index.open(folder)


def test_swapped_encoder_is_detected(built, tmp_path):
    folder = _unlocked_copy(built, tmp_path)
    model.save_encoder(model.build_encoder("cnn", embedding_dim=8), tmp_path / "other.keras")
    shutil.copyfile(tmp_path / "other.keras", folder / ENCODER_FILE)
    with pytest.raises(IncompatibleIndex, match="not the encoder this index was built with"):
        Index.open(folder)
    # Even with the manifest rewritten to match, the metadata's fingerprint gives it away.
    _rewrite_manifest(folder)
    with pytest.raises(IncompatibleIndex, match="other than the one it was built with"):
        Index.open(folder)


def test_encoder_of_another_dimension_is_detected(built, tmp_path):
    folder = _unlocked_copy(built, tmp_path)
    model.save_encoder(model.build_encoder("cnn", embedding_dim=4), folder / ENCODER_FILE)
    with h5py.File(folder / METADATA_FILE, "a") as handle:
        from siamindex.data import sha256_file

        handle.attrs["encoder_sha256"] = sha256_file(folder / ENCODER_FILE)
    _rewrite_manifest(folder)
    index = Index.open(folder)
    with pytest.raises(IncompatibleIndex, match="holds 8-d vectors but its encoder outputs 4-d"):
        index.embed(np.zeros((1, 28, 28), np.uint8))


def test_count_mismatch_is_detected(built, tmp_path):
    import faiss

    folder = _unlocked_copy(built, tmp_path)
    index = faiss.read_index(str(folder / FAISS_FILE))
    index.remove_ids(faiss.IDSelectorBatch(np.array([0, 1, 2], dtype=np.int64)))
    faiss.write_index(index, str(folder / FAISS_FILE))
    _rewrite_manifest(folder)
    with pytest.raises(
        IncompatibleIndex, match="FAISS holds 1297 vectors but the metadata has 1300"
    ):
        Index.open(folder)


def test_unknown_format_version_is_detected(built, tmp_path):
    folder = _unlocked_copy(built, tmp_path)
    with h5py.File(folder / METADATA_FILE, "a") as handle:
        handle.attrs["format_version"] = 99
    _rewrite_manifest(folder)
    with pytest.raises(IncompatibleIndex, match="format version 99"):
        Index.open(folder)


def test_missing_file_is_detected(built, tmp_path):
    folder = _unlocked_copy(built, tmp_path)
    (folder / METADATA_FILE).unlink()
    with pytest.raises(IncompatibleIndex, match="is missing metadata.h5"):
        Index.open(folder)


# -- index types ---------------------------------------------------------------------------


@pytest.mark.parametrize("index_type, knob", [("IVF4,Flat", "nprobe"), ("HNSW16", "ef_search")])
def test_approximate_index_types(tmp_path, encoder_file, small_idx_dir, index_type, knob):
    index = Index.build(
        tmp_path / "ann",
        encoder=encoder_file,
        data_dir=small_idx_dir,
        index_type=index_type,
        progress=False,
    )
    assert index.info()["index_type"] == index_type
    vectors = index.store.rows.embeddings[:20]
    exact_d, exact_rows = brute_force(index.store.rows.embeddings, vectors, 5)
    # With the search knob at its widest the approximate index is exact on this tiny set.
    distances, ids = index.store.search(vectors, 5, **{knob: 4 if knob == "nprobe" else 256})
    np.testing.assert_array_equal(ids[:, 0], index.store.rows.ids[exact_rows[:, 0]])
    np.testing.assert_allclose(distances, exact_d, atol=1e-4)
    # Removing works for both (HNSW by rebuilding from the stored embeddings).
    index.remove([0, 1])
    assert Index.open(index.path).store.index.ntotal == 1298


def test_bad_index_type_is_rejected_before_any_work(tmp_path, encoder_file, small_idx_dir):
    with pytest.raises(ValueError, match="FAISS rejects index type 'Bogus99'"):
        Index.build(
            tmp_path / "x",
            encoder=encoder_file,
            data_dir=small_idx_dir,
            index_type="Bogus99",
            progress=False,
        )
    assert not (tmp_path / "x").exists()


def test_search_knob_for_the_wrong_type(built):
    with pytest.raises(ValueError, match="nprobe does not apply"):
        built.store.search(built.store.rows.embeddings[:1], 1, nprobe=3)


# -- crash survival ----------------------------------------------------------------------


def test_build_killed_part_way_leaves_the_previous_index_usable(built, encoder_file, small_idx_dir):
    queries = built.store.rows.embeddings[:5]
    want = built.store.search(queries, 3)
    command = [
        sys.executable,
        "-m",
        "siamindex",
        "build-index",
        "--name",
        str(built.path),
        "--encoder",
        str(encoder_file),
        "--data",
        str(small_idx_dir),
        "--force",
        "-q",
    ]
    for delay in (0.5, 2.0, 3.5, 5.0):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        reopened = Index.open(built.path)
        got = reopened.store.search(queries, 3)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], atol=1e-5)
    # A later writer cleans up whatever the killed ones left, and never opens it.
    built.remove([0])
    leftovers = [p.name for p in built.path.parent.iterdir() if p.name.endswith(".partial")]
    assert leftovers == []
