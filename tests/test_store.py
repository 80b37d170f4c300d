"""IndexStore: FAISS search against NumPy, per-call search settings, ids, and its two files."""

from __future__ import annotations

from dataclasses import replace

import h5py
import numpy as np
import pytest
from conftest import brute_force

from siamindex.bundle import FAISS_FILE, METADATA_FILE
from siamindex.errors import BadIndexType, BadSearchSetting, IncompatibleIndex
from siamindex.facts import IndexFacts
from siamindex.store import IndexStore, Rows, build_faiss_index, image_hashes, new_faiss_index


def make_store(vectors: np.ndarray, labels: np.ndarray, index_type: str = "flat") -> IndexStore:
    ids = np.arange(len(vectors), dtype=np.int64)
    rows = Rows(
        ids=ids,
        labels=labels,
        split=np.full(len(vectors), "train"),
        source_index=ids.copy(),
        image_sha256=np.array([f"{i:064x}" for i in ids]),
        embeddings=vectors,
    )
    facts = IndexFacts(
        embedding_dim=vectors.shape[1], threshold=1.0, index_type=index_type, next_id=len(ids)
    )
    index = build_faiss_index(vectors, ids, index_type, seed=0)
    names = tuple(str(c) for c in range(int(labels.max()) + 1))
    return IndexStore(index, rows, names, np.full(len(names), np.nan), facts)


@pytest.fixture
def clustered():
    """2,000 vectors in 20 clusters of 16-d (approximate search has something to miss)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, size=2000)
    centres = rng.normal(size=(20, 16)) * 3
    vectors = (centres[labels] + rng.normal(size=(2000, 16))).astype(np.float32)
    return vectors, labels


def test_exact_search_equals_brute_force(clustered):
    vectors, labels = clustered
    store = make_store(vectors, labels)
    queries = vectors[:50] + 0.01
    distances, ids = store.search(queries, 7)
    want_d, want_rows = brute_force(vectors, queries, 7)
    np.testing.assert_array_equal(ids, store.rows.ids[want_rows])
    np.testing.assert_allclose(distances, want_d, atol=1e-4)


@pytest.mark.parametrize(
    "index_type, setting, narrow, wide",
    [("IVF32,Flat", "nprobe", 1, 32), ("HNSW4", "ef_search", 1, 512)],
)
def test_approximate_settings_apply_per_call_only(clustered, index_type, setting, narrow, wide):
    import faiss

    vectors, labels = clustered
    store = make_store(vectors, labels, index_type)
    queries = vectors[::4] + np.random.default_rng(1).normal(size=(500, 16)).astype(np.float32)
    _, exact_rows = brute_force(vectors, queries, 1)
    exact = store.rows.ids[exact_rows[:, 0]]
    inner = faiss.downcast_index(store.index.index)
    before = inner.nprobe if setting == "nprobe" else inner.hnsw.efSearch

    def recall(value: int) -> float:
        _, ids = store.search(queries, 1, **{setting: value})
        return float(np.mean(ids[:, 0] == exact))

    narrow_recall, wide_recall = recall(narrow), recall(wide)
    assert narrow_recall < 0.99  # really approximate: the narrow setting misses neighbours
    assert wide_recall > max(0.99, narrow_recall)
    after = inner.nprobe if setting == "nprobe" else inner.hnsw.efSearch
    assert after == before  # the shared index object was never changed


@pytest.mark.parametrize(
    "index_type, setting, message",
    [
        ("flat", {"nprobe": 3}, "nprobe applies to IVF index types only"),
        ("flat", {"ef_search": 3}, "ef_search applies to HNSW index types only"),
        ("IVF4,Flat", {"ef_search": 3}, "ef_search applies to HNSW"),
        ("IVF4,Flat", {"nprobe": 2, "ef_search": 3}, "not both"),
    ],
)
def test_search_setting_for_the_wrong_type(clustered, index_type, setting, message):
    vectors, labels = clustered
    store = make_store(vectors[:500], labels[:500], index_type)
    with pytest.raises(BadSearchSetting, match=message):
        store.search(vectors[:1], 1, **setting)


def test_bad_index_types():
    with pytest.raises(BadIndexType, match="FAISS rejects index type 'Bogus99'"):
        new_faiss_index(8, "Bogus99")
    vectors = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    with pytest.raises(BadIndexType, match="cannot train index type 'IVF999,Flat' on 100"):
        build_faiss_index(vectors, np.arange(100), "IVF999,Flat", seed=0)


@pytest.mark.parametrize("index_type", ["flat", "HNSW8"])
def test_add_and_remove_keep_ids(clustered, index_type):
    vectors, labels = clustered
    store = make_store(vectors[:300], labels[:300], index_type)
    grown = store.add(store.rows.take(np.array([0, 1])))  # ids are replaced by fresh ones
    np.testing.assert_array_equal(grown.rows.ids[-2:], [300, 301])
    assert grown.facts.next_id == 302 and store.facts.next_id == 300  # a copy, not a change
    shrunk = grown.remove(np.array([5, 300]))
    assert shrunk.index.ntotal == 300 and 5 not in shrunk.rows.ids and 300 not in shrunk.rows.ids
    _, ids = shrunk.search(vectors[5:6], 1)
    assert ids[0, 0] not in (5, 300)
    with pytest.raises(KeyError, match="12345"):
        shrunk.rows_of(np.array([12345]))


def test_write_then_read_round_trip(tmp_path, clustered):
    vectors, labels = clustered
    store = make_store(vectors[:200], labels[:200])
    store = replace(store, facts=replace(store.facts, support=5, target_precision=0.9))
    store.write(tmp_path)
    assert IndexStore.read(tmp_path).probability is None  # none calibrated: none stored
    store = replace(store, probability=np.array([[0.1, 0.5, 0.9], [1.0, 0.4, 0.0]]))
    store.class_thresholds[3] = 0.25
    store.write(tmp_path)
    again = IndexStore.read(tmp_path)
    assert again.facts == replace(store.facts, format_version=1)
    assert again.class_names == store.class_names
    np.testing.assert_array_equal(again.probability, store.probability)
    np.testing.assert_array_equal(again.class_thresholds, store.class_thresholds)
    for name in ("ids", "labels", "split", "source_index", "image_sha256", "embeddings"):
        np.testing.assert_array_equal(getattr(again.rows, name), getattr(store.rows, name))
    np.testing.assert_array_equal(again.search(vectors[:3], 2)[1], store.search(vectors[:3], 2)[1])


def test_read_checks_count_and_format_version(tmp_path, clustered):
    import faiss

    vectors, labels = clustered
    make_store(vectors[:200], labels[:200]).write(tmp_path)
    with h5py.File(tmp_path / METADATA_FILE, "a") as handle:
        handle.attrs["format_version"] = 99
    with pytest.raises(IncompatibleIndex, match="format version 99"):
        IndexStore.read(tmp_path)
    with h5py.File(tmp_path / METADATA_FILE, "a") as handle:
        handle.attrs["format_version"] = 1
    index = faiss.read_index(str(tmp_path / FAISS_FILE))
    index.remove_ids(faiss.IDSelectorBatch(np.array([0, 1, 2], dtype=np.int64)))
    faiss.write_index(index, str(tmp_path / FAISS_FILE))
    with pytest.raises(IncompatibleIndex, match="FAISS holds 197 vectors but the metadata has 200"):
        IndexStore.read(tmp_path)


def test_image_hashes_are_of_the_pixels():
    import hashlib

    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    hashes = image_hashes(images)
    assert hashes[1] == hashlib.sha256(images[1].tobytes()).hexdigest()
    assert len(set(hashes)) == 3
