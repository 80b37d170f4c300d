"""Shard planning and loading: ids run over splits in order, each shard loads on its own."""

from __future__ import annotations

import numpy as np
import pytest

from siamindex import shards
from siamindex.errors import DataError
from siamindex.store import image_hashes


def test_plan_cuts_splits_into_shards_with_running_ids(small_idx_dir):
    planned = shards.plan(str(small_idx_dir), ("train", "test"))
    assert planned.count == 1300 and planned.class_names == tuple(str(i) for i in range(10))
    assert [(t.split, t.start, t.stop, t.first_id) for t in planned.tasks] == [
        ("train", 0, 1000, 0),
        ("test", 0, 300, 1000),
    ]


def test_plan_of_an_augmented_set_never_generates_it(monkeypatch):
    from siamindex import augmented

    def refuse(*args):
        raise AssertionError("plan() generated a shard")

    monkeypatch.setattr(augmented.AugmentedMnist, "shard", refuse)
    planned = shards.plan("mnist-aug:25000:3", ("train", "test"))
    assert planned.source == "mnist-aug:25000:3" and planned.count == 35_000
    assert [t.rows for t in planned.tasks] == [10_000, 10_000, 5_000, 10_000]
    assert planned.tasks[-1].split == "test" and planned.tasks[-1].first_id == 25_000


def test_load_gives_the_rows_of_the_split(small_idx_dir, mnist_test):
    task = shards.ShardTask(str(small_idx_dir), "test", 100, 250, 1100)
    images, labels, source = shards.load(task)
    assert np.array_equal(images, mnist_test.images[100:250])
    assert np.array_equal(labels, mnist_test.labels[100:250])
    assert np.array_equal(source, np.arange(100, 250))


def test_embed_shard_gives_every_stored_column(small_idx_dir, fake_encoder):
    task = shards.ShardTask(str(small_idx_dir), "train", 0, 40, 7)
    columns = shards.embed_shard(task, fake_encoder)
    assert np.array_equal(columns["ids"], np.arange(7, 47))
    assert set(columns["split"]) == {"train"}
    assert np.array_equal(columns["image_sha256"], image_hashes(columns["images"]))
    assert np.allclose(columns["embeddings"], fake_encoder(columns["images"]))


def test_open_set_task_generates_the_calibration_non_digits():
    from siamindex.exposure import exposure

    images, labels, _ = shards.load(shards.ShardTask(None, shards.OPEN_SET, 10_003, 50, -1))
    assert np.array_equal(images, exposure(50, seed=10_003))
    assert (labels == -1).all()


def test_splits_with_different_classes_are_refused(tmp_path, small_idx_dir):
    from PIL import Image

    for split, classes in (("train", "ab"), ("test", "abc")):
        for name in classes:
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((28, 28), np.uint8)).save(folder / "0.png")
    with pytest.raises(DataError, match="different classes"):
        shards.plan(str(tmp_path), ("train", "test"))
