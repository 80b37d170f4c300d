"""Options that change answers, each tested through the CLI against a reference computed here:
support, per-class thresholds of a late class, --target-precision, approximate index types,
--resize, compare --encoder and train --align/--no-align."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_idx_dataset
from PIL import Image

from siamindex.cli import cli
from siamindex.data import load_dataset
from siamindex.embedding import load_embedder
from siamindex.index import Index

TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _build(path: Path, data: Path, *extra: str, splits: str = "train") -> Index:
    _run(
        "build-index", "--index", str(path), "--encoder", str(TINY_ENCODER), "--data", str(data),
        "--splits", splits, "-q", *extra,
    )  # fmt: skip
    return Index.open(path)


@pytest.fixture(scope="module")
def embed():
    return load_embedder(TINY_ENCODER)


@pytest.mark.parametrize("support", [1, 5])
def test_support_decides_by_the_nth_nearest_member(tmp_path, small_idx_dir, mnist_test, support):
    index = _build(tmp_path / "idx", small_idx_dir, "--support", str(support))
    assert index.facts.support == support
    claims = [(i, str((mnist_test.labels[i] + i % 2) % 10)) for i in range(20)]
    (tmp_path / "c.csv").write_text(
        "image,class\n" + "".join(f"mnist:test:{i},{c}\n" for i, c in claims)
    )
    out = json.loads(
        _run(
            "check",
            "--claims",
            str(tmp_path / "c.csv"),
            "--index",
            str(tmp_path / "idx"),
            "--format",
            "json",
        )
    )
    vectors = index.embed(mnist_test.images[:20])
    rows = index.store.rows
    for (i, claimed), result in zip(claims, out["results"], strict=True):
        members = rows.labels == int(claimed)
        distances = np.sort(np.linalg.norm(rows.embeddings[members] - vectors[i], axis=1))
        assert result["support"] == support
        assert result["support_distance"] == pytest.approx(distances[support - 1], abs=1e-5)
        assert result["distance"] == pytest.approx(distances[0], abs=1e-5)
        within = distances[support - 1] <= result["threshold"]
        assert result["is_member"] == (within and result["nearer_class"] is None)


def test_a_new_class_uses_the_global_threshold_under_per_class(tmp_path, small_idx_dir):
    path = tmp_path / "idx"
    # The distance rule: this tiny encoder's per-class thresholds then all differ from the global
    # one (under nearest-class, class 7's happens to equal it).
    index = _build(path, small_idx_dir, "--rule", "distance", splits="test")
    added = json.loads(
        _run(
            "add",
            "mnist:test:300-305",
            "--index",
            str(path),
            "--class",
            "late",
            "--new-class",
            "--format",
            "json",
        )  # fmt: skip
    )
    assert added["ids"] == list(range(300, 306))
    info = json.loads(_run("info", "--index", str(path), "--format", "json"))
    assert info["per_class"]["late"] == 6 and "late" not in info["class_thresholds"]
    base = ["check", "mnist:test:306-311", "--index", str(path), "--per-class", "--format", "json"]
    late = json.loads(_run(*base, "--class", "late"))["results"]
    seven = json.loads(_run(*base, "--class", "7"))["results"]
    for result in late:  # no threshold of its own: the global one, recorded as such
        assert result["threshold_kind"] == "global"
        assert result["threshold"] == pytest.approx(index.facts.threshold)
        within = result["support_distance"] <= result["threshold"]
        assert result["is_member"] == (within and result["nearer_class"] is None)
    for result in seven:
        assert result["threshold_kind"] == "per-class"
        assert result["threshold"] == pytest.approx(info["class_thresholds"]["7"])
        within = result["support_distance"] <= result["threshold"]
        assert result["is_member"] == (within and result["nearer_class"] is None)
    assert info["class_thresholds"]["7"] != pytest.approx(index.facts.threshold)


def test_target_precision_reached_is_recorded(tmp_path, small_idx_dir):
    index = _build(tmp_path / "idx", small_idx_dir, "--target-precision", "0.9")
    assert index.facts.target_precision == 0.9 and index.facts.min_recall is None
    assert str(index.facts.threshold_method).endswith("largest threshold with precision >= 0.9")


def test_target_precision_not_reached_warns_in_one_line(tmp_path, mnist_train, mnist_test):
    # 100 train images stored twice, under their class and under the next one: a wrong-class
    # claim about one meets its twin at distance 0, so no threshold is fully precise.
    train = mnist_train.subset(slice(0, 600))
    twins = train.subset(slice(0, 100))
    images = np.concatenate([train.images, twins.images])
    labels = np.concatenate([train.labels, (twins.labels + 1) % 10])
    data = write_idx_dataset(
        tmp_path / "data",
        type(train)(images, labels, train.class_names, "train", train.source, np.arange(700)),
        mnist_test.subset(slice(0, 10)),
    )
    command = [
        sys.executable, "-m", "siamindex", "build-index", "--index", str(tmp_path / "idx"),
        "--encoder", str(TINY_ENCODER), "--data", str(data), "--splits", "train",
        "--support", "1", "--target-precision", "1.0", "-q",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ})
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "Precision 1.0" in line]
    assert len(warnings) == 1 and "Traceback" not in done.stderr
    assert "calibrated by max F1 instead" in warnings[0]
    facts = Index.open(tmp_path / "idx").facts
    assert "max F1 (precision >= 1.0 not reachable)" in str(facts.threshold_method)
    assert facts.target_precision == 1.0 and facts.min_recall == 0.99


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(
        np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)])
    )


@pytest.mark.parametrize(
    "index_type, setting, low, high",
    [("IVF32,Flat", "--nprobe", "1", "32"), ("HNSW4", "--ef-search", "10", "200")],
)
def test_approximate_index_types_through_the_cli(
    tmp_path, small_idx_dir, mnist_test, index_type, setting, low, high
):
    path = tmp_path / "idx"
    index = _build(path, small_idx_dir, "--index-type", index_type)
    assert index.facts.index_type == index_type
    vectors = index.embed(mnist_test.images[:200])
    stored = index.store.rows.embeddings
    exact = np.argsort(np.linalg.norm(vectors[:, None] - stored[None], axis=2), axis=1)[:, :10]
    recalls = {}
    for value in (low, high):
        out = json.loads(
            _run(
                "query",
                "mnist:test:0-199",
                "--index",
                str(path),
                "-k",
                "10",
                setting,
                value,
                "--format",
                "json",
            )
        )
        found = np.array([[m["id"] for m in r["matches"]] for r in out])
        recalls[value] = _recall(found, index.store.rows.ids[exact])
    # Really approximate at the low setting, and close to exact at the high one.
    assert 0.5 < recalls[low] < 0.99 and recalls[high] >= 0.99, recalls
    if setting == "--ef-search":  # below k, some answers would come back short: refused
        result = CliRunner().invoke(
            cli, ["query", "mnist:test:0", "--index", str(path), "-k", "10", setting, "9"]
        )
        assert result.exit_code == 2 and "ef_search 9 is below k 10" in result.output


def test_resize_scales_a_large_image_back(tmp_path, small_idx_dir, mnist_test):
    path = tmp_path / "idx"
    _build(path, small_idx_dir)
    big = tmp_path / "big.png"
    Image.fromarray(mnist_test.images[3]).resize((56, 56), Image.NEAREST).save(big)
    # --resize is a plain Lanczos scale to 28x28 (no MNIST layout): the answers are those of
    # the scaled pixels, which are the original's but for the filter's ringing.
    scaled = np.asarray(Image.open(big).resize((28, 28), Image.Resampling.LANCZOS))
    assert np.abs(scaled.astype(int) - mnist_test.images[3]).mean() < 3
    np.save(tmp_path / "scaled.npy", scaled)
    resized = _run("query", str(big), "--resize", "--index", str(path), "--format", "csv")
    direct = _run("query", str(tmp_path / "scaled.npy"), "--index", str(path), "--format", "csv")
    assert resized.splitlines()[1:] == [
        line.replace(str(tmp_path / "scaled.npy"), str(big)) for line in direct.splitlines()[1:]
    ]
    laid_out = _run("query", str(big), "--index", str(path), "--format", "csv")  # --prepare auto
    assert laid_out != resized


def test_compare_with_an_encoder_uses_the_article_threshold(embed, mnist_test):
    for first, second in ((0, 1), (0, 0), (1, 2)):
        out = json.loads(
            _run(
                "compare",
                f"mnist:test:{first}",
                f"mnist:test:{second}",
                "--encoder",
                str(TINY_ENCODER),
                "--format",
                "json",
            )
        )
        vectors = embed(mnist_test.images[[first, second]])
        distance = float(np.linalg.norm(vectors[0] - vectors[1]))
        assert out["threshold"] == 0.5
        assert out["distance"] == pytest.approx(distance, abs=1e-5)
        assert out["same"] == (distance < 0.5)


def test_train_align_scales_the_output_and_no_align_does_not(tmp_path, small_idx_dir):
    import keras

    base = [
        "train", "--architecture", "article-mlp", "--sampler", "balanced", "--epochs", "1",
        "--embedding-dim", "8", "--data", str(small_idx_dir), "--train-size", "400",
        "--test-size", "100", "--no-augment", "--outlier-share", "0", "-q", "--format", "json",
    ]  # fmt: skip
    reports, outputs = {}, {}
    images = load_dataset(small_idx_dir, "test").images[:50]
    for flag in ("--align", "--no-align"):
        out = tmp_path / f"{flag[2:]}.keras"
        reports[flag] = json.loads(_run(*base, flag, "--out", str(out)))
        model = keras.saving.load_model(out, safe_mode=True)
        layers = [layer.name for layer in model.layers]
        assert ("threshold_alignment" in layers) == (flag == "--align")
        outputs[flag] = load_embedder(out)(images)
    scale = reports["--align"]["output_scale"]
    assert reports["--no-align"]["output_scale"] == 1.0 and scale != pytest.approx(1.0)
    assert reports["--align"]["settings"]["align_threshold"] is True
    # Same seed, same training: the aligned encoder is the other one times the scale.
    np.testing.assert_allclose(
        outputs["--align"], outputs["--no-align"] * scale, rtol=1e-4, atol=1e-5
    )


def test_check_ef_search_searches_a_graph_per_class_of_an_hnsw_index(tiny_train_bundles):
    path, flat = tiny_train_bundles["hnsw"], tiny_train_bundles["flat"]  # the same vectors
    assert type(Index.open(path).partition).__name__ == "GraphPartition"

    def answers(*extra: str) -> list[dict]:
        args = ("check", "--class", "3", "mnist:test:0-299", "--index", str(path))
        out = json.loads(_run(*args, "--format", "json", "-q", *extra))
        return out["results"]

    exact = answers("--index", str(flat))  # searched exactly
    # Wider than any class (about 100 members each): the exact answers, vote included.
    wide = answers("--ef-search", "400")
    for got, want in zip(wide, exact, strict=True):
        assert got["is_member"] == want["is_member"] and got["nearer_class"] == want["nearer_class"]
        assert got["support_distance"] == pytest.approx(want["support_distance"], rel=1e-5)
    # The default breadth (16) answers from the same graphs without an error.
    assert len(answers()) == 300

    for extra, message in (
        (("--index", str(flat), "--ef-search", "8"), "ef_search applies to HNSW index types"),
        (("--nprobe", "2", "--ef-search", "8"), "Give nprobe (IVF index types) or ef_search"),
    ):
        args = ["check", "--class", "3", "mnist:test:0", "--index", str(path), *extra]
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert message in result.output.strip().splitlines()[-1]


def test_check_nprobe_searches_an_ivf_index_per_class(tmp_path, small_idx_dir):
    path = tmp_path / "idx"
    index = _build(path, small_idx_dir, "--index-type", "IVF8,Flat")
    lists = max(index.partition.lists(c) for c in index.partition.rows)
    assert lists >= 2  # 1,000 train images: about 100 per class, 2 lists each

    def support_distances(*extra: str) -> np.ndarray:
        out = json.loads(
            _run(
                "check",
                "--class",
                "3",
                "mnist:test:0-299",
                "--index",
                str(path),
                "--format",
                "json",
                "-q",
                *extra,
            )  # fmt: skip
        )
        return np.array([r["support_distance"] for r in out["results"]])

    exact = support_distances()
    # Every list visited: the same members as the exact search.
    np.testing.assert_allclose(support_distances("--nprobe", str(lists)), exact, rtol=1e-5)
    # One list: an approximate search finds the same or farther members, never nearer ones.
    one = support_distances("--nprobe", "1")
    assert np.all(one >= exact - 1e-5) and np.any(one > exact + 1e-5)

    flat = tmp_path / "flat"
    _build(flat, small_idx_dir)
    result = CliRunner().invoke(
        cli, ["check", "--class", "3", "mnist:test:0", "--index", str(flat), "--nprobe", "4"]
    )
    assert result.exit_code == 2
    assert (
        result.output.strip()
        .splitlines()[-1]
        .endswith("nprobe applies to IVF index types only; this index is 'flat'.")
    )
