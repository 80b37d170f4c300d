"""Builds that stream shards: the same bundle as the in-memory build, from the same data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_ENCODER

from siamindex import scale
from siamindex.build import BuildSettings, build_index
from siamindex.cli import cli
from siamindex.errors import DataError
from siamindex.index import Index


def same_store(a: Index, b: Index, atol: float = 1e-5) -> None:
    """Two indexes hold the same rows (vectors within atol) and answer queries alike."""
    for field in ("ids", "labels", "split", "source_index", "image_sha256"):
        assert np.array_equal(getattr(a.store.rows, field), getattr(b.store.rows, field)), field
    assert np.allclose(a.store.rows.embeddings, b.store.rows.embeddings, atol=atol)
    assert a.facts.dataset_fingerprint == b.facts.dataset_fingerprint
    assert a.facts.threshold == pytest.approx(b.facts.threshold, abs=atol)
    queries = a.store.rows.embeddings[::97]
    da, ia = a.store.search(queries, 5)
    db, ib = b.store.search(queries, 5)
    assert np.array_equal(ia, ib)
    assert np.allclose(da, db, atol=atol)


def test_streamed_build_is_the_in_memory_build(tmp_path, small_idx_dir):
    settings = BuildSettings(
        encoder=TINY_ENCODER,
        index=tmp_path / "whole",
        data_dir=small_idx_dir,
        progress=False,
        open_set=300,
    )
    whole, _ = build_index(settings)
    streamed, phases = scale.build_streamed(
        BuildSettings(**{**settings.__dict__, "index": tmp_path / "streamed"})
    )
    same_store(whole, streamed)
    assert whole.facts.open_set_rejected == pytest.approx(streamed.facts.open_set_rejected)
    assert np.allclose(whole.store.class_thresholds, streamed.store.class_thresholds, atol=1e-5)
    assert np.array_equal(
        whole.store.with_images().rows.images, streamed.store.with_images().rows.images
    )
    assert {"load (worker s)", "embed (worker s)", "add", "calibrate"} <= set(phases.seconds)


def test_an_ivf_type_is_trained_on_the_first_shards_then_filled(tmp_path):
    index, phases = scale.build(
        BuildSettings(
            encoder=TINY_ENCODER,
            index=tmp_path / "aug",
            data_dir="mnist-aug:12000",
            splits=("train",),
            index_type="IVF32,Flat",
            progress=False,
        )
    )
    assert "train quantizer" in phases.seconds
    assert index.store.index.ntotal == 12_000 and index.facts.source == "mnist-aug:12000:0"
    # Digits, so calibrated on generated non-digits too (as the bundled MNIST is).
    assert "2000 non-digits" in index.facts.threshold_method
    assert index.facts.open_set_rejected is not None
    vectors = index.store.rows.embeddings[:200]
    found = index.store.search(vectors, 1, nprobe=32)[1][:, 0]
    assert np.array_equal(found, np.arange(200))  # every stored vector finds itself


def test_an_hnsw_type_streams_its_class_graphs_into_the_bundle(tmp_path, small_idx_dir):
    from siamindex.bundle import CLASS_GRAPHS_FILE

    settings = BuildSettings(
        encoder=TINY_ENCODER,
        index=tmp_path / "whole",
        data_dir=small_idx_dir,
        index_type="HNSW16",
        progress=False,
    )
    whole, _ = build_index(settings)
    streamed, _ = scale.build_streamed(
        BuildSettings(**{**settings.__dict__, "index": tmp_path / "streamed"})
    )
    assert (streamed.folder / CLASS_GRAPHS_FILE).is_file()
    kept = streamed.store.class_graphs
    assert kept is not None and sorted(kept) == sorted(whole.store.class_graphs or {})
    vectors, labels = streamed.store.rows.embeddings, streamed.store.rows.labels
    for label, graph in kept.items():
        members = vectors[labels == label]
        assert graph.ntotal == len(members)
        # Member i is the class's i-th row, as in the in-memory build's graphs.
        assert np.array_equal(graph.reconstruct_n(0, graph.ntotal), members)
    claimed = [whole.store.class_names[label] for label in (labels[:50] + 1) % 10]
    got = streamed.check_vectors(vectors[:50], claimed, ef_search=200)
    want = whole.check_vectors(vectors[:50], claimed, ef_search=200)
    assert [r.is_member for r in got] == [r.is_member for r in want]


def test_an_engine_that_stops_short_publishes_nothing(tmp_path, small_idx_dir, monkeypatch):
    target = tmp_path / "idx"
    settings = BuildSettings(
        encoder=TINY_ENCODER, index=target, data_dir=small_idx_dir, progress=False
    )
    build_index(settings)
    before = target.resolve()
    real = scale.local_shards

    def short(tasks, *args):
        yield from real(tasks[:1], *args)

    monkeypatch.setattr(scale, "local_shards", short)
    streamed = BuildSettings(**{**settings.__dict__, "force": True, "data_dir": "mnist-aug:100"})
    with pytest.raises(DataError, match="delivered"):
        scale.build(BuildSettings(**{**streamed.__dict__, "splits": ("train", "test")}))
    assert target.resolve() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_cli_builds_an_augmented_index(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "build-index",
            "--index",
            str(tmp_path / "aug"),
            "--encoder",
            str(TINY_ENCODER),
            "--data",
            "mnist-aug:3000:5",
            "--splits",
            "train",
            "--format",
            "json",
            "-q",
        ],
    )
    assert result.exit_code == 0, result.output
    facts = json.loads(result.stdout)
    assert facts["count"] == 3000 and facts["source"] == "mnist-aug:3000:5"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "mnist-aug:0"], "asks for no images"),
        (["--data", "mnist-aug:lots"], "mnist-aug:N[:SEED]"),
        (["--address", "auto"], "--address applies to --engine ray"),
        (["--workers", "2"], "--workers applies to --engine ray"),
        (["--engine", "spark"], "'spark' is not one of"),
    ],
)
def test_bad_build_options_get_one_line(tmp_path, args, message):
    result = CliRunner().invoke(
        cli,
        ["build-index", "--index", str(tmp_path / "x"), "--encoder", str(TINY_ENCODER), *args],
    )
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "x").exists()
