"""Parquet files and .npy shards as datasets: read a range at a time, same index as in memory."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import TINY_ENCODER
from PIL import Image
from test_scale import same_store

from siamindex import scale, shardfiles, shards
from siamindex.build import BuildSettings, build_index
from siamindex.cli import cli
from siamindex.data import load_dataset
from siamindex.errors import DataError


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def parquet_dir(tmp_path, mnist_test):
    """Three Parquet files of MNIST test images, in the three image forms, text labels."""
    folder = tmp_path / "parquet"
    folder.mkdir()
    images, labels = mnist_test.images[:450], mnist_test.labels[:450]
    forms = [
        lambda i: png(i),
        lambda i: i.tobytes(),
        lambda i: i.ravel().tolist(),
    ]
    for part, form in enumerate(forms):
        rows = slice(150 * part, 150 * (part + 1))
        table = pa.table(
            {
                "image": [form(i) for i in images[rows]],
                "label": [f"digit-{v}" for v in labels[rows]],
            }
        )
        pq.write_table(table, folder / f"part-{part}.parquet")
    return folder


@pytest.fixture
def npy_dir(tmp_path, mnist_test):
    folder = tmp_path / "npy"
    folder.mkdir()
    for part in range(2):
        rows = slice(200 * part, 200 * (part + 1))
        np.save(folder / f"shard-{part}.npy", mnist_test.images[rows])
        np.save(folder / f"shard-{part}.labels.npy", mnist_test.labels[rows])
    return folder


def test_parquet_folder_reads_as_the_images_it_holds(parquet_dir, mnist_test):
    dataset = load_dataset(parquet_dir, "train")
    assert np.array_equal(dataset.images, mnist_test.images[:450])
    assert dataset.class_names == tuple(f"digit-{d}" for d in range(10))
    names = np.array(dataset.class_names)
    assert list(names[dataset.labels]) == [f"digit-{v}" for v in mnist_test.labels[:450]]
    images, labels = shardfiles.read(
        str(parquet_dir / "part-1.parquet"), 10, 20, dataset.class_names
    )
    assert np.array_equal(images, mnist_test.images[160:170])


def test_npy_shards_plan_and_load_a_range_at_a_time(npy_dir, mnist_test):
    planned = shards.plan(str(npy_dir), ("train",))
    assert planned.count == 400 and planned.class_names == tuple(str(d) for d in range(10))
    task = planned.tasks[1]
    images, labels, rows = shards.load(task)
    assert np.array_equal(images, mnist_test.images[200:400])
    assert np.array_equal(labels, mnist_test.labels[200:400])
    assert rows[0] == 200


@pytest.mark.parametrize("kind", ["parquet", "npy"])
def test_streamed_build_of_files_is_the_in_memory_build(tmp_path, kind, parquet_dir, npy_dir):
    folder = parquet_dir if kind == "parquet" else npy_dir
    settings = BuildSettings(
        encoder=TINY_ENCODER,
        index=tmp_path / "whole",
        data_dir=folder,
        splits=("train",),
        progress=False,
    )
    whole, _ = build_index(settings)
    streamed, _ = scale.build_streamed(
        BuildSettings(**{**settings.__dict__, "index": tmp_path / "s"})
    )
    same_store(whole, streamed)
    assert whole.store.class_names == streamed.store.class_names


def test_file_datasets_say_what_is_wrong(tmp_path, npy_dir, parquet_dir):
    with pytest.raises(DataError, match="pass --splits train"):
        shards.plan(str(npy_dir), ("train", "test"))
    (npy_dir / "shard-1.labels.npy").unlink()
    with pytest.raises(DataError, match="put its n labels in shard-1.labels.npy"):
        shards.plan(str(npy_dir), ("train",))
    bad = tmp_path / "bad"
    bad.mkdir()
    pq.write_table(pa.table({"pixels": [b"x"], "label": [1]}), bad / "a.parquet")
    with pytest.raises(DataError, match="lacks column.*image"):
        shards.plan(str(bad), ("train",))
    pq.write_table(pa.table({"image": [b"not an image"], "label": [1]}), bad / "a.parquet")
    planned = shards.plan(str(bad), ("train",))
    with pytest.raises(DataError, match="row 0"):
        shards.load(planned.tasks[0])


def test_cli_builds_from_a_parquet_folder_and_hints_at_the_split(tmp_path, parquet_dir):
    base = ["build-index", "--encoder", str(TINY_ENCODER), "--data", str(parquet_dir), "-q"]
    result = CliRunner().invoke(cli, [*base, "--index", str(tmp_path / "a")])
    assert result.exit_code == 1 and "--splits train" in result.output
    result = CliRunner().invoke(cli, [*base, "--index", str(tmp_path / "a"), "--splits", "train"])
    assert result.exit_code == 0, result.output
