"""Index: open, query, check, compare, add, remove, info (fake encoder), and old bundles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import brute_force
from fakes import FakeEncoder

from siamindex.bundle import writer_lock
from siamindex.errors import DataError, IncompatibleIndex, IndexLocked, IndexNotFound
from siamindex.index import Index
from siamindex.vote import rival_reach

OLD_BUNDLE = Path(__file__).parent / "data" / "bundle-0.1.0"


@pytest.fixture
def queries(mnist_test):
    return mnist_test.images[2000:2030], mnist_test.labels[2000:2030]


def test_query_equals_brute_force(fake_index, queries):
    images, _ = queries
    results = fake_index.query(images, k=4)
    rows = fake_index.store.rows
    vectors = fake_index.embed(images)
    distances = np.linalg.norm(vectors[:, None] - rows.embeddings[None], axis=2)
    want_d, order = brute_force(rows.embeddings, vectors, 4)
    for q, result in enumerate(results):
        assert [m.id for m in result.matches] == list(rows.ids[order[q]])
        np.testing.assert_allclose([m.distance for m in result.matches], want_d[q], atol=1e-4)
        assert [m.rank for m in result.matches] == [1, 2, 3, 4]
        nearest = fake_index.store.class_names[rows.labels[order[q, 0]]]
        assert result.matches[0].class_name == nearest
        # The nearest-class rule: predicted is the class whose 3rd nearest member is nearest,
        # when that lies within the threshold.
        assert fake_index.facts.rule == "nearest-class"
        third = [np.sort(distances[q, rows.labels == c])[2] for c in np.unique(rows.labels)]
        best = int(np.argmin(third))
        expected = fake_index.store.class_names[best]
        expected = expected if third[best] <= fake_index.facts.threshold else None
        assert result.predicted == expected


def test_query_open_set_says_no_match(fake_index, queries):
    images, _ = queries
    store = fake_index.store
    fake_index.store = replace(store, facts=replace(store.facts, threshold=0.0))
    assert all(r.predicted is None for r in fake_index.query(images[:3], k=1))
    fake_index.store = replace(store, facts=replace(store.facts, threshold=1e9))
    assert all(r.predicted is not None for r in fake_index.query(images[:3], k=1))


def test_check_equals_brute_force(fake_index, queries):
    images, labels = queries
    classes = [str((label + i) % 10) for i, label in enumerate(labels)]
    results = fake_index.check(images, classes, true_classes=[str(v) for v in labels])
    vectors = fake_index.embed(images)
    rows = fake_index.store.rows
    checked = []
    reach = rival_reach(fake_index.store, fake_index.facts.threshold)
    assert reach >= fake_index.facts.threshold
    for i, result in enumerate(results):
        members = np.flatnonzero(rows.labels == int(classes[i]))
        d = np.linalg.norm(rows.embeddings[members] - vectors[i], axis=1)
        assert result.nearest_id == rows.ids[members[np.argmin(d)]]
        assert result.distance == pytest.approx(d.min(), abs=1e-4)
        third = np.sort(d)[2]  # the index's support is 3: three members must be that near
        assert result.support == 3
        assert result.support_distance == pytest.approx(third, abs=1e-4)
        # The nearest-class rule: also, no other class's 3rd nearest member is nearer.
        others = [
            np.sort(np.linalg.norm(rows.embeddings[rows.labels == c] - vectors[i], axis=1))[2]
            for c in np.unique(rows.labels)
            if c != int(classes[i])
        ]
        beaten = min(others) < third
        within = third <= fake_index.facts.threshold
        reached = third <= reach  # only those are searched for a nearer class
        assert (result.nearer_class is not None) == (beaten and reached)
        assert result.is_member == (within and not beaten)
        assert result.threshold_kind == "global"
        assert (result.class_name, result.true_class) == (classes[i], str(labels[i]))
        checked.append((beaten, within))
    assert {(True, True), (False, True)} <= set(checked)  # both kinds of verdict occur


def test_per_class_thresholds_decide_and_fall_back(fake_index, queries):
    images, labels = queries
    classes = [str(v) for v in labels]
    global_results = fake_index.check(images, classes)
    thresholds = fake_index.store.class_thresholds
    thresholds[:] = np.nan
    thresholds[int(classes[0])] = 0.0  # this class now accepts nothing
    results = fake_index.check(images, classes, per_class=True)
    for result, plain in zip(results, global_results, strict=True):
        if result.class_name == classes[0]:
            assert result.threshold_kind == "per-class" and result.threshold == 0.0
            assert result.is_member is False
        else:  # no threshold of its own: the global one decides
            assert result.threshold_kind == "global" and result.is_member == plain.is_member
    assert any(
        plain.is_member
        for plain, r in zip(global_results, results, strict=True)
        if r.class_name == classes[0]
    )


def test_unknown_class_and_k_out_of_range(fake_index, queries):
    with pytest.raises(DataError, match="Unknown class 'eleven'"):
        fake_index.check(queries[0][:1], ["eleven"])
    with pytest.raises(DataError, match="1 images but 2 classes"):
        fake_index.check(queries[0][:1], ["1", "2"])
    for k in (0, 1301):
        with pytest.raises(DataError, match="k must be between 1 and the index size"):
            fake_index.query(queries[0][:1], k=k)


def test_compare_uses_the_pair_threshold(fake_index, mnist_test):
    result = fake_index.compare(mnist_test.images[0], mnist_test.images[0])
    assert result.distance == pytest.approx(0.0, abs=1e-5) and result.same
    assert result.threshold == fake_index.facts.pair_threshold != fake_index.facts.threshold
    other = fake_index.compare(mnist_test.images[0], mnist_test.images[1])
    assert other.same == (other.distance < other.threshold)


def test_add_and_remove_keep_ids_stable(fake_index, mnist_test, fake_encoder):
    before = fake_index.store.rows.ids.copy()
    label_of = dict(zip(before, fake_index.store.rows.labels, strict=True))
    new_ids = fake_index.add(mnist_test.images[9000:9003], "7")
    np.testing.assert_array_equal(new_ids, [1300, 1301, 1302])
    fake_index.remove([5, 1301])
    again = Index.open(fake_index.path, embed=fake_encoder)
    ids = again.store.rows.ids
    np.testing.assert_array_equal(ids, np.concatenate([np.delete(before, 5), [1300, 1302]]))
    for i, label in zip(ids, again.store.rows.labels, strict=True):
        if i < 1300:
            assert label_of[i] == label
    assert again.store.rows.split[-1] == "added"
    assert list(again.add(mnist_test.images[:1], "3")) == [1303]  # never reused
    _, found = again.store.search(again.embed(mnist_test.images[9000:9001]), 1)
    assert found[0, 0] == 1300


def test_add_a_new_class_only_when_asked(fake_index, mnist_test, fake_encoder):
    with pytest.raises(DataError, match="Unknown class 'cat'"):
        fake_index.add(mnist_test.images[:1], "cat")
    ids = fake_index.add(mnist_test.images[:4], "cat", new_class=True)
    reopened = Index.open(fake_index.path, embed=fake_encoder)
    assert reopened.info().per_class["cat"] == 4 and len(ids) == 4
    result = reopened.check(mnist_test.images[:1], ["cat"], per_class=True)[0]
    assert result.threshold_kind == "global"  # the new class has no threshold of its own
    assert result.nearest_id == ids[0] and result.distance == pytest.approx(0, abs=1e-5)


def test_remove_errors(fake_index):
    with pytest.raises(DataError, match="99999"):
        fake_index.remove([99999])
    with pytest.raises(DataError, match="empty index"):
        fake_index.remove(fake_index.store.rows.ids)


def test_one_writer_at_a_time(fake_index, mnist_test):
    with writer_lock(fake_index.path):
        with pytest.raises(IndexLocked, match="one writer at a time"):
            fake_index.add(mnist_test.images[:1], "1")


def test_missing_index():
    with pytest.raises(IndexNotFound, match="build one with"):
        Index.open("/nonexistent/place/idx")


def test_encoder_of_another_width_is_detected(fake_index):
    index = Index.open(fake_index.path, embed=FakeEncoder(embedding_dim=4))
    with pytest.raises(IncompatibleIndex, match="holds 8-d vectors but its encoder outputs 4-d"):
        index.embed(np.zeros((1, 28, 28), np.uint8))


def test_info_is_the_facts_with_counts(fake_index):
    info = fake_index.info()
    assert info.facts is fake_index.facts and info.name == "idx"
    flat = info.to_dict()
    assert flat["threshold"] == fake_index.facts.threshold and flat["count"] == 1300
    assert flat["distance"] == "euclidean" and "facts" not in flat
    listed = [p for p in fake_index.folder.iterdir() if p.name != "manifest.json"]
    assert flat["size_bytes"] == sum(p.stat().st_size for p in listed)
    json.dumps(flat)  # JSON-ready


# -- bundles written by siamindex 0.1.0 (before this layout) ---------------------------------


def test_a_bundle_written_by_0_1_0_opens_and_answers_as_it_did(tmp_path, mnist_test):
    shutil.copytree(OLD_BUNDLE, tmp_path / "old")
    index = Index.open(tmp_path / "old")
    facts = index.facts
    assert facts.distance == "euclidean" and facts.support == 3 and facts.embedding_dim == 6
    assert facts.splits == ("train",) and facts.target_precision is None
    answers = np.load(OLD_BUNDLE.parent / "bundle-0.1.0-answers.npy")
    results = index.query(mnist_test.images[:5], k=3)  # the bundle's own Keras encoder
    np.testing.assert_array_equal([[m.id for m in r.matches] for r in results], answers)
    index.add(mnist_test.images[:2], "4")  # and it can be changed, into the current layout
    assert Index.open(tmp_path / "old").info().count == 302


def test_reopened_in_a_fresh_process_it_searches_like_brute_force(tmp_path, mnist_test):
    queries = mnist_test.images[5000:5040]
    np.save(tmp_path / "q.npy", queries)
    script = (
        "import numpy as np; from siamindex.index import Index; "
        f"ix = Index.open(r'{OLD_BUNDLE}'); v = ix.embed(np.load(r'{tmp_path / 'q.npy'}')); "
        "d, i = ix.store.search(v, 10); "
        f"np.savez(r'{tmp_path / 'out.npz'}', d=d, i=i, v=v, e=ix.store.rows.embeddings)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    out = np.load(tmp_path / "out.npz")
    want_d, want_rows = brute_force(out["e"], out["v"], 10)
    np.testing.assert_array_equal(out["i"], want_rows)  # ids are rows in a fresh build
    np.testing.assert_allclose(out["d"], want_d, atol=1e-4)


# -- crash survival ----------------------------------------------------------------------


def test_open_retries_when_a_writer_prunes_the_bundle_it_resolved(fake_index, monkeypatch):
    """A reader resolves the name to bundle A; before it reads A, two writes publish B and C
    and prune A. The open reads C instead of failing."""
    from siamindex import store as store_module

    original = store_module.IndexStore.read
    calls: list[Path] = []

    def read_after_two_writes(folder, manifest=None):
        calls.append(folder)
        if len(calls) == 1:
            writer = Index.open(fake_index.path, embed=fake_index._embed)
            writer.remove([1])
            writer.remove([2])
            assert not folder.exists()  # A is gone
        return original(folder, manifest)

    monkeypatch.setattr(store_module.IndexStore, "read", staticmethod(read_after_two_writes))
    reopened = Index.open(fake_index.path)
    assert len(calls) >= 2 and calls[0] != calls[-1]
    assert reopened.folder == fake_index.path.resolve()
    assert {1, 2}.isdisjoint(reopened.store.rows.ids.tolist())
    assert len(reopened.store.rows) == len(fake_index.store.rows) - 2


def test_probabilities_are_calibrated_on_claims_the_index_never_saw(fake_index, mnist_test):
    # The fake index stores the small split; these test images are not in it.
    images, labels = mnist_test.images[3000:4000], mnist_test.labels[3000:4000]
    wrong = (labels + np.random.default_rng(0).integers(1, 10, len(labels))) % 10
    claimed = np.concatenate([labels, wrong]).astype(str)
    results = fake_index.check(np.concatenate([images, images]), list(claimed))
    chance = np.array([r.probability for r in results])
    truth = np.concatenate([np.ones(len(labels), bool), np.zeros(len(labels), bool)])
    assert np.all((chance >= 0) & (chance <= 1))
    # A claim that another class is nearer to counts as beyond every distance.
    support = np.array([np.inf if r.nearer_class else r.support_distance for r in results])
    order = np.argsort(support, kind="stable")
    assert np.all(np.diff(chance[order]) <= 1e-12)  # farther never more likely
    # Calibrated: in each tenth of the probability range, the share of true claims matches the
    # mean probability (expected calibration error 0.03 here), and it beats the base rate.
    from siamindex.metrics import calibration_error

    assert calibration_error(chance, truth) <= 0.08
    assert np.mean((chance - truth) ** 2) < np.mean((truth.mean() - truth) ** 2) - 0.02
    sure = chance >= 0.9
    assert sure.sum() >= 30 and truth[sure].mean() >= 0.85
    # query reports the same probability for its nearest match's class.
    answer = fake_index.query(images[:1], k=1)[0]
    claim = fake_index.check(images[:1], [answer.matches[0].class_name])[0]
    assert answer.probability == pytest.approx(claim.probability)


def test_a_0_1_0_bundle_has_no_probability(tmp_path, mnist_test):
    shutil.copytree(OLD_BUNDLE, tmp_path / "old")
    index = Index.open(tmp_path / "old")
    assert index.store.probability is None
    assert index.check(mnist_test.images[:1], ["7"])[0].probability is None


def test_the_bundle_keeps_every_stored_images_pixels(fake_index, mnist_test, monkeypatch):
    from siamindex import data as data_module

    small = data_module.load_dataset(fake_index.facts.source, "test")
    assert fake_index.store.images_file is not None and fake_index.store.rows.images is None

    # Read from the bundle, not from the dataset it was built from.
    def no_dataset(*args, **kwargs):
        raise AssertionError("the source dataset was read")

    monkeypatch.setattr(data_module, "load_dataset", no_dataset)
    rows = fake_index.store.rows_of(np.array([1000, 1299, 1005]))  # test rows 0, 299, 5
    got = fake_index.stored_images(rows)
    np.testing.assert_array_equal(np.stack(got), small.images[[0, 299, 5]])
    # Added images keep their pixels too; removing rows keeps the others'.
    (new_id,) = fake_index.add(mnist_test.images[4000:4001], "3")
    fake_index.remove([1000])
    reopened = Index.open(fake_index.path)
    rows = reopened.store.rows_of(np.array([new_id, 1299]))
    got = reopened.stored_images(rows)
    np.testing.assert_array_equal(got[0], mnist_test.images[4000])
    np.testing.assert_array_equal(got[1], small.images[299])


def test_a_bundle_that_keeps_no_pixels_reads_them_from_its_dataset(
    tmp_path, monkeypatch, mnist_train, mnist_test
):
    from conftest import write_idx_dataset

    from siamindex import data

    shutil.copytree(OLD_BUNDLE, tmp_path / "old")
    index = Index.open(tmp_path / "old")
    assert index.store.images_file is None
    # The fixture was built from a folder of MNIST's first 300 train images that no longer
    # exists; a copy of it elsewhere stands in, for the path the bundle records.
    copy = write_idx_dataset(
        tmp_path / "data", mnist_train.subset(slice(0, 300)), mnist_test.subset(slice(0, 10))
    )
    asked, original = [], data.load_dataset

    def load_dataset(source, split):  # type: ignore[no-untyped-def]
        asked.append(source)
        return original(copy, split)

    monkeypatch.setattr(data, "load_dataset", load_dataset)
    (image,) = index.stored_images(np.array([7]))
    assert asked == [index.facts.source]
    rows = index.store.rows
    np.testing.assert_array_equal(image, mnist_train.images[rows.source_index[7]])
    assert rows.split[7] == "train"


def test_hnsw_bundles_keep_a_graph_per_class_up_to_date_through_every_write(
    tmp_path, small_idx_dir, fake_encoder, mnist_test, fake_index
):
    from fakes import fake_encoder_file

    from siamindex import graphs
    from siamindex.build import BuildSettings, build_index
    from siamindex.bundle import CLASS_GRAPHS_FILE, read_manifest
    from siamindex.search import GraphPartition

    path = tmp_path / "hnsw"
    settings = BuildSettings(
        encoder=fake_encoder_file(tmp_path), index=path, data_dir=small_idx_dir, progress=False
    )
    build_index(replace(settings, index_type="HNSW16"), embed=fake_encoder)

    def opened() -> Index:
        index = Index.open(path, embed=fake_encoder)
        assert CLASS_GRAPHS_FILE in read_manifest(index.folder)["files"]  # verified with the rest
        kept = index.store.class_graphs
        assert kept is not None  # read from the bundle, not built again
        assert index.store.class_graph_map == kept
        counts = np.bincount(index.store.rows.labels)
        assert {label: g.ntotal for label, g in kept.items()} == {
            label: int(n) for label, n in enumerate(counts) if n
        }
        assert isinstance(index.partition, GraphPartition)
        return index

    def members_found(index: Index, images: np.ndarray, class_name: str) -> np.ndarray:
        results = index.check_vectors(
            index.embed(images), [class_name] * len(images), ef_search=400
        )
        return np.array([r.distance for r in results])

    index = opened()
    images = mnist_test.images[:3]
    new_ids = index.add(images, "3")
    index = opened()
    assert np.all(members_found(index, images, "3") < 1e-5)  # each finds itself in class 3
    index.relabel(new_ids[:1], "5")
    index = opened()
    assert members_found(index, images[:1], "5")[0] < 1e-5
    assert members_found(index, images[:1], "3")[0] > 1e-5
    index.remove(new_ids)
    index = opened()
    assert np.all(members_found(index, images, "3") > 1e-5)
    # The graphs' M is the index's; a flat bundle has none; a damaged graph file is caught.
    assert graphs.width(index.store.index) == 16
    assert not (fake_index.folder / CLASS_GRAPHS_FILE).exists()
    (index.folder / CLASS_GRAPHS_FILE).write_bytes(b"damaged")
    with pytest.raises(IncompatibleIndex, match="classes.h5"):
        Index.open(path, embed=fake_encoder)


def test_big_ivf_indexes_search_classes_inside_the_index(
    tmp_path, small_idx_dir, fake_encoder, monkeypatch
):
    from fakes import fake_encoder_file

    from siamindex import index as index_module
    from siamindex.build import BuildSettings, build_index
    from siamindex.search import ClassPartition, SelectorPartition

    built, _ = build_index(
        BuildSettings(
            encoder=fake_encoder_file(tmp_path),
            index=tmp_path / "ivf",
            data_dir=small_idx_dir,
            index_type="IVF8,Flat",
            progress=False,
        ),
        embed=fake_encoder,
    )
    assert type(built.partition) is ClassPartition  # 1,300 rows: per-class copies, exact
    monkeypatch.setattr(index_module, "SELECTOR_FROM", 1000)  # "big" from 1,000 rows
    big = Index.open(tmp_path / "ivf", embed=fake_encoder)
    assert isinstance(big.partition, SelectorPartition)
    vectors = big.store.rows.embeddings[:100]
    claimed = [
        big.store.class_names[(label + i) % 10]
        for i, label in enumerate(big.store.rows.labels[:100])
    ]
    every_list = big.check_vectors(vectors, claimed, nprobe=8)
    exact = built.check_vectors(vectors, claimed)
    assert [r.is_member for r in every_list] == [r.is_member for r in exact]
    assert np.allclose(
        [r.support_distance for r in every_list], [r.support_distance for r in exact], atol=1e-4
    )
