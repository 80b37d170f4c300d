"""The Ray engine, on a local 2-CPU Ray cluster: the same index as the local engine (even with
a worker killed mid-build: Ray restarts it), claims checked alike, failures in one line, and
without Ray a one-line install hint."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TINY_ENCODER
from test_scale import same_store

from siamindex import cluster, scale
from siamindex.build import BuildSettings, build_index
from siamindex.cli import cli
from siamindex.errors import EngineError

AUGMENTED = BuildSettings(
    encoder=TINY_ENCODER,
    data_dir="mnist-aug:12000:3",  # two shards: 10,000 and 2,000
    splits=("train",),
    index_type="IVF16,Flat",
    progress=False,
)


@pytest.fixture(scope="module")
def local_augmented(tmp_path_factory):
    settings = BuildSettings(**{**AUGMENTED.__dict__, "index": tmp_path_factory.mktemp("l") / "i"})
    return scale.build(settings)[0]


def test_ray_engine_matches_the_in_memory_build_of_files(tmp_path, ray_cluster, small_idx_dir):
    settings = BuildSettings(
        encoder=TINY_ENCODER,
        index=tmp_path / "whole",
        data_dir=small_idx_dir,
        progress=False,
        open_set=200,
    )
    whole, _ = build_index(settings)
    on_ray, _ = scale.build(
        BuildSettings(
            **{**settings.__dict__, "index": tmp_path / "ray", "engine": "ray", "workers": 1}
        )
    )
    same_store(whole, on_ray)
    assert whole.facts.open_set_rejected == pytest.approx(on_ray.facts.open_set_rejected)


def test_ray_builds_the_local_engines_index_even_when_a_worker_dies(
    tmp_path, ray_cluster, monkeypatch, local_augmented
):
    marker = tmp_path / "killed"
    monkeypatch.setenv(cluster.KILL_ENV, f"10000:{marker}")  # the worker on the second shard
    on_ray, phases = scale.build(
        BuildSettings(**{**AUGMENTED.__dict__, "index": tmp_path / "idx", "engine": "ray"})
    )
    assert marker.exists(), "no worker was killed: the test hook did not fire"
    same_store(local_augmented, on_ray)
    queries = local_augmented.store.rows.embeddings[:300]
    found = on_ray.store.search(queries, 3, nprobe=4)
    expected = local_augmented.store.search(queries, 3, nprobe=4)
    assert np.array_equal(found[1], expected[1])
    assert np.allclose(found[0], expected[0], atol=1e-5)
    assert [name for name in phases.peak_mb if name.startswith("worker")]  # workers report memory


def test_a_failing_engine_publishes_nothing(tmp_path, ray_cluster, small_idx_dir):
    target = tmp_path / "idx"
    settings = BuildSettings(
        encoder=TINY_ENCODER, index=target, data_dir=small_idx_dir, progress=False
    )
    build_index(settings)
    before = target.resolve()
    broken = tmp_path / "broken.keras"
    broken.write_bytes(b"not a keras file")
    with pytest.raises(EngineError, match="old index .* is unchanged"):
        scale.build(
            BuildSettings(
                **{
                    **settings.__dict__,
                    "encoder": broken,
                    "engine": "ray",
                    "force": True,
                    "workers": 1,
                }
            )
        )
    assert target.resolve() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def test_without_ray_the_cli_says_how_to_install_it(tmp_path, monkeypatch, small_idx_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as without the extra
    with pytest.raises(EngineError, match=r"pip install 'siamindex\[cluster\]'"):
        cluster.require_ray()
    result = CliRunner().invoke(
        cli,
        [
            "build-index",
            "--index",
            str(tmp_path / "x"),
            "--encoder",
            str(TINY_ENCODER),
            "--data",
            str(small_idx_dir),
            "--engine",
            "ray",
        ],
    )
    assert result.exit_code == 1
    assert "pip install 'siamindex[cluster]'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_ray_checks_a_claims_file_as_the_local_engine_does(
    tmp_path, ray_cluster, tiny_index, mnist_test, monkeypatch
):
    from test_bulk import write_claims

    from siamindex import bulk

    monkeypatch.setattr(bulk, "CHUNK_CLAIMS", 100)
    path = write_claims(tmp_path / "claims.csv", mnist_test, 250)
    settings = bulk.CheckSettings(str(tiny_index))
    local = bulk.check_claims(path, tmp_path / "local.csv", settings)
    on_ray = bulk.check_claims(path, tmp_path / "ray.csv", settings, engine="ray", workers=1)
    assert (tmp_path / "ray.csv").read_text() == (tmp_path / "local.csv").read_text()
    assert on_ray.summary == local.summary and on_ray.claims == 250
