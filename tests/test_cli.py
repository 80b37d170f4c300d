from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import schemas
from click.testing import CliRunner
from schemas import assert_schema

from siamindex.cli import cli
from siamindex.query import CHECK_CSV_HEADER

TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"

NO_TENSORFLOW = """
import sys
from click.testing import CliRunner
from siamindex.cli import cli
result = CliRunner().invoke(cli, sys.argv[1:])
assert result.exit_code in (0, 2), (result.exit_code, result.output)
loaded = [m for m in ("tensorflow", "keras", "faiss") if m in sys.modules]
assert not loaded, loaded
"""


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["train", "--help"],
        ["evaluate", "--help"],
        ["train", "--epochs", "0"],
        ["train", "--architecture", "transformer"],
        ["train", "--margin", "-1"],
        ["train", "--val-fraction", "1.5"],
        ["train", "--out", "model.h5"],
        ["evaluate"],
    ],
)
def test_help_and_usage_errors_do_not_import_tensorflow(args):
    subprocess.run([sys.executable, "-c", NO_TENSORFLOW, *args], check=True, capture_output=True)


def test_every_command_has_help():
    runner = CliRunner()
    for name in cli.commands:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["train", "--epochs", "0"], 2, "0 is not in the range x>=1"),
        (
            ["train", "--architecture", "transformer"],
            2,
            "'transformer' is not one of 'article-mlp', 'cnn'",
        ),
        (["train", "--out", "model.h5"], 2, "must end in .keras"),
        (["train", "--batch-size", "1"], 2, "1 is not in the range x>=2"),
        (["train", "--outlier-share", "0.5"], 2, "0.5 is not in the range 0<=x<0.5"),
        (
            ["train", "--sampler", "article", "--augment", "-q", "--out", "/tmp/x.keras"],
            2,
            "train with --sampler in-batch only",
        ),
        (["evaluate", "--encoder", "/nonexistent.keras"], 1, "does not exist; train one"),
        (["train", "--data", "/nonexistent/dir", "-q"], 1, "does not exist or is not a folder"),
    ],
)
def test_errors_are_one_line_with_exit_codes(args, code, message, tmp_path):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.startswith("Error")]) == 1


def test_corrupt_idx_data_is_a_one_line_error(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 7)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x00")
    result = CliRunner().invoke(
        cli, ["train", "--data", str(tmp_path), "-q", "--out", str(tmp_path / "e.keras")]
    )
    assert result.exit_code == 1
    assert "truncated" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "e.keras").exists()


def test_train_then_evaluate_on_a_small_subset(tmp_path, small_idx_dir):
    out = tmp_path / "enc.keras"
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "train",
            "--data",
            str(small_idx_dir),
            "--epochs",
            "1",
            "--embedding-dim",
            "16",
            "--out",
            str(out),
            "--format",
            "json",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert_schema(report, schemas.TRAIN)
    assert report["sizes"] == {"train": 900, "val": 100, "test": 300}
    assert report["settings"]["augment"] is True and report["settings"]["outlier_share"] == 0.2
    assert out.is_file() and out.with_suffix(".json").is_file()

    result = runner.invoke(
        cli,
        ["evaluate", "--encoder", str(out), "--data", str(small_idx_dir), "--format", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert_schema(measured, schemas.EVALUATE)
    assert measured["sizes"] == {"stored": 1000, "queries": 300}
    # Recomputed here from the data: the encoder's vectors and raw pixels, brute force.
    from siamindex.data import load_dataset
    from siamindex.embedding import load_embedder
    from siamindex.evaluation import retrieval_metrics

    stored, queries = (load_dataset(small_idx_dir, split) for split in ("train", "test"))
    embed = load_embedder(out)
    spaces = {
        "encoder": (embed(stored.images), embed(queries.images)),
        "raw_pixels": (
            stored.images.reshape(len(stored), -1).astype(np.float32) / 255,
            queries.images.reshape(len(queries), -1).astype(np.float32) / 255,
        ),
    }
    for name, (base, asked) in spaces.items():
        want = retrieval_metrics(base, stored.labels, asked, queries.labels)
        assert measured[name]["one_nn_accuracy"] == pytest.approx(want["one_nn_accuracy"])
        assert measured[name]["map_at_r"] == pytest.approx(want["map_at_r"], abs=1e-6)
        membership = measured[name]["membership"]
        assert membership["claims"] == 600
        assert membership["true_positive"] + membership["false_negative"] == 300
    assert measured["raw_pixels"]["pair_accuracy"] is None
    # Raw-pixel 1-NN on the first 1,000 MNIST train images is ~0.85-0.9 for these 300 queries.
    assert 0.8 < measured["raw_pixels"]["one_nn_accuracy"] < 0.95

    table = runner.invoke(cli, ["evaluate", "--encoder", str(out), "--data", str(small_idx_dir)])
    assert table.exit_code == 0 and "1-NN accuracy" in table.output and "raw pixels" in table.output


def _build(runner, path, *extra, splits="train"):
    return runner.invoke(
        cli,
        [
            "build-index",
            "--index",
            str(path),
            "--encoder",
            str(TINY_ENCODER),
            "--data",
            str(_data_dir[0]),
            "--splits",
            splits,
            "-q",
            *extra,
        ],
        catch_exceptions=False,
    )


_data_dir: list[Path] = []


@pytest.fixture(autouse=True)
def _remember_data(small_idx_dir):
    _data_dir[:] = [small_idx_dir]


@pytest.fixture(scope="module")
def index(tmp_path_factory, small_idx_dir):
    """An index of the 1,000 small train images with a real (tiny) Keras encoder."""
    from siamindex.build import BuildSettings, build_index

    path = tmp_path_factory.mktemp("cli") / "idx"
    build_index(
        BuildSettings(
            encoder=TINY_ENCODER,
            index=path,
            data_dir=small_idx_dir,
            splits=("train",),
            progress=False,
        )
    )
    return path


def test_build_index_info_add_remove(tmp_path):
    runner = CliRunner()
    name = str(tmp_path / "idx")
    result = _build(runner, name, "--format", "json")
    assert result.exit_code == 0, result.output
    built = json.loads(result.output)
    assert built["count"] == 1000 and built["distance"] == "euclidean"
    assert set(built["build_seconds"]) == {"load", "embed", "add", "calibrate", "write"}

    result = runner.invoke(cli, ["info", "--index", name])
    assert result.exit_code == 0 and "1000 (train 1000)" in result.output
    blas_line = next(line for line in result.output.splitlines() if line.startswith("blas "))
    assert "FAISS's OpenBLAS" in blas_line and "kernel" in blas_line

    result = runner.invoke(
        cli, ["add", "mnist:test:0-2", "--index", name, "--class", "7"], catch_exceptions=False
    )
    assert result.exit_code == 0 and "ids 1000-1002" in result.output
    result = runner.invoke(
        cli, ["remove", "--index", name, "--ids", "3,1001"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    facts = json.loads(runner.invoke(cli, ["info", "--index", name, "--format", "json"]).output)
    assert facts["count"] == 1001 and facts["per_split"] == {"added": 2, "train": 999}
    assert facts["blas"]["kernel"] and facts["blas"]["source"]


def test_old_spellings_still_work_with_one_notice_each(tmp_path):
    runner = CliRunner()
    name = str(tmp_path / "idx")
    result = runner.invoke(
        cli,
        [
            "build-index",
            "--name",
            name,
            "--encoder",
            str(TINY_ENCODER),
            "--data",
            str(_data_dir[0]),
            "--splits",
            "test",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and _notices(result) == [
        "Deprecated: build-index --name NAME is now --index NAME."
    ]
    result = runner.invoke(cli, ["info", name], catch_exceptions=False)
    assert result.exit_code == 0 and "300 (test 300)" in result.output
    assert _notices(result) == ["Deprecated: info NAME is now --index NAME."]
    result = runner.invoke(cli, ["add", name, "mnist:test:0", "--label", "7"])
    assert result.exit_code == 0 and "ids 300" in result.output, result.output
    assert _notices(result) == [
        "Deprecated: add --label C is now add --class C.",
        "Deprecated: add NAME IMAGE... is now --index NAME IMAGE....",
    ]
    result = runner.invoke(cli, ["remove", name, "--ids", "300"])
    assert result.exit_code == 0 and _notices(result) == [
        "Deprecated: remove NAME is now --index NAME."
    ]
    (tmp_path / "c.csv").write_text("image,class,label\nmnist:test:0,7,7\n")
    result = runner.invoke(cli, ["check", "--claims", str(tmp_path / "c.csv"), "--index", name])
    assert result.exit_code == 0 and "1 true positives" in result.output
    assert _notices(result) == [
        f"Deprecated: claims column 'label' in '{tmp_path / 'c.csv'}' is now called 'true_class'."
    ]


def test_old_training_names_map_to_the_new_ones(tmp_path):
    result = CliRunner().invoke(
        cli,
        [
            "train",
            "--encoder",
            "seed-mlp",
            "--sampler",
            "seed",
            "--epochs",
            "1",
            "--data",
            str(_data_dir[0]),
            "--train-size",
            "200",
            "--test-size",
            "50",
            "-q",
            "--out",
            str(tmp_path / "e.keras"),
            "--format",
            "json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert _notices(result) == [
        "Deprecated: architecture 'seed-mlp' is now called 'article-mlp'.",
        "Deprecated: sampler 'seed' is now called 'article'.",
        "Deprecated: train --encoder NAME is now --architecture NAME.",
    ]
    report = json.loads(result.output[result.output.index("{") :])
    assert report["settings"]["architecture"] == "article-mlp"
    assert report["settings"]["sampler"] == "article" and report["settings"]["article_reproduction"]


def test_an_old_and_a_new_spelling_together_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["info", "a", "--index", "b"])
    assert result.exit_code == 2 and "Give the index once, with --index" in result.output
    result = CliRunner().invoke(cli, ["add", "x.png", "--class", "1", "--label", "2"])
    assert result.exit_code == 2 and "--label is its old spelling" in result.output


def _notices(result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("Deprecated:")]


def test_index_names_resolve_under_the_indexes_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMINDEX_INDEXES", str(tmp_path / "store"))
    result = _build(CliRunner(), "digits", splits="test")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store" / "digits" / "manifest.json").is_file()
    assert CliRunner().invoke(cli, ["info", "--index", "digits"]).exit_code == 0
    monkeypatch.setenv("SIAMINDEX_INDEX", "digits")  # the default index of every command
    assert "300 (test 300)" in CliRunner().invoke(cli, ["info"]).output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["info", "--index", "/nonexistent/idx"], 1, "No index at '/nonexistent/idx'"),
        (["build-index", "--splits", "train,valid"], 2, "must list train and/or test"),
        (["build-index", "--batch-size", "0"], 2, "0 is not in the range x>=1"),
        (["build-index", "--target-precision", "1.5"], 2, "1.5 is not in the range"),
        (["build-index", "--min-recall", "1.5"], 2, "1.5 is not in the range 0<=x<=1"),
        (["build-index", "--open-set", "-5"], 2, "-5 is not in the range x>=0"),
        (["remove", "--index", "x", "--ids", "5-2"], 2, "'5-2' is not an id or range"),
        (["remove", "--index", "x", "--ids", "abc"], 2, "'abc' is not an id or range"),
        (["add", "mnist:test:0", "--index", "x", "--class", "1"], 1, "No index at"),
        (["add", "--index", "x", "--class", "1"], 2, "Missing argument 'IMAGES...'"),
        (["add", "mnist:test:0", "--index", "x"], 2, "add needs --class C"),
    ],
)
def test_index_command_errors(args, code, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMINDEX_INDEXES", str(tmp_path))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_build_index_refuses_to_overwrite_and_rejects_bad_types(tmp_path):
    runner = CliRunner()
    path = tmp_path / "i"
    assert _build(runner, path, splits="test").exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    again = _build(runner, path, splits="test")
    assert again.exit_code == 1 and "already exists; pass --force" in again.output
    bad = _build(runner, path, "--force", "--index-type", "IVF999999,Flat", splits="test")
    assert bad.exit_code == 2 and "Invalid value for --index-type" in bad.output
    assert "cannot train index type" in bad.output
    bogus = _build(runner, path, "--force", "--index-type", "Nonsense", splits="test")
    assert bogus.exit_code == 2 and "FAISS rejects index type 'Nonsense'" in bogus.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_build_index_without_an_encoder_refuses_before_training(tmp_path):
    path = tmp_path / "i"
    assert _build(CliRunner(), path, splits="test").exit_code == 0
    result = CliRunner().invoke(cli, ["build-index", "--index", str(path), "-q"])
    assert result.exit_code == 1 and "already exists; pass --force" in result.output
    assert "training the default encoder" not in result.output
    for bad, message in (
        (["--index-type", "Nonsense"], "FAISS rejects index type 'Nonsense'"),
        (["--support", "0"], "0 is not in the range x>=1"),
    ):
        result = CliRunner().invoke(cli, ["build-index", "--index", str(tmp_path / "j"), *bad])
        assert result.exit_code == 2 and message in result.output
        assert "training the default encoder" not in result.output


def test_info_on_a_file_path(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "afile")])
    assert result.exit_code == 1 and "is a file, not an index folder" in result.output


# -- query, check, compare -----------------------------------------------------------------


def test_query_cli_formats_parse(index, tmp_path):
    runner = CliRunner()
    base = ["query", "mnist:test:0-2", "--index", str(index), "-k", "3"]
    as_json = json.loads(
        runner.invoke(cli, [*base, "--format", "json"], catch_exceptions=False).output
    )
    assert [len(r["matches"]) for r in as_json] == [3, 3, 3]
    rows = list(csv.DictReader(io.StringIO(runner.invoke(cli, [*base, "--format", "csv"]).output)))
    assert len(rows) == 9 and rows[0]["query"] == "mnist:test:0" and float(rows[0]["distance"]) >= 0
    assert [int(r["id"]) for r in rows[:3]] == [m["id"] for m in as_json[0]["matches"]]
    assert [r["class"] for r in rows[:3]] == [m["class"] for m in as_json[0]["matches"]]
    table = runner.invoke(cli, base).output
    assert "predicted" in table and "mnist:test:2" in table


def test_check_cli_with_claims_and_summary(index, tmp_path):
    lines = ["image,class,true_class"] + [
        f"mnist:test:{i},{c},{t}"
        for i, (c, t) in enumerate([("7", "7"), ("1", "2"), ("1", "1"), ("3", "0")])
    ]
    (tmp_path / "claims.csv").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    base = ["check", "--claims", str(tmp_path / "claims.csv"), "--index", str(index)]
    result = runner.invoke(cli, [*base, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [r["class"] for r in data["results"]] == ["7", "1", "1", "3"]
    assert [r["true_class"] for r in data["results"]] == ["7", "2", "1", "0"]
    summary = data["summary"]
    assert summary["claims"] == 4
    assert summary["true_positive"] + summary["false_negative"] == 2  # two true claims
    assert set(summary["per_class"]) == {"1", "3", "7"}
    output = runner.invoke(cli, [*base, "--format", "csv"]).output
    assert output.splitlines()[0] == ",".join(CHECK_CSV_HEADER)
    rows = list(csv.DictReader(io.StringIO(output)))
    assert [r["member"] for r in rows] == [str(r["is_member"]).lower() for r in data["results"]]
    assert [float(r["probability"]) for r in rows] == [
        pytest.approx(r["probability"], abs=1e-4) for r in data["results"]
    ]
    table = runner.invoke(cli, base).output
    assert "confusion:" in table and "4 claims" in table


def test_check_cli_with_class_flag(index):
    result = CliRunner().invoke(
        cli,
        [
            "check",
            "--class",
            "7",
            "mnist:test:0",
            "mnist:test:1",
            "--index",
            str(index),
            "--per-class",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and "per-class" in result.output and "2 claims" in result.output


def test_compare_cli(index):
    result = CliRunner().invoke(
        cli,
        ["compare", "mnist:test:0", "mnist:test:0", "--index", str(index), "--format", "json"],
        catch_exceptions=False,
    )
    data = json.loads(result.output)
    assert data["same"] is True and data["distance"] < 1e-4


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["query", "mnist:test:0", "-k", "0"], 2, "0 is not in the range x>=1"),
        (
            ["query", "mnist:test:0", "-k", "5000"],
            1,
            "k must be between 1 and the index size (1000)",
        ),
        (["query", "/no/such.png"], 1, "does not exist"),
        (["query", "mnist:test:0", "--nprobe", "4"], 2, "nprobe applies to IVF index types only"),
        (["check", "mnist:test:0"], 2, "Give either --class C"),
        (["check", "--class", "1"], 2, "--class needs IMAGE arguments"),
        (["check", "--class", "eleven", "mnist:test:0"], 1, "Unknown class 'eleven'"),
        (["compare", "mnist:test:0", "mnist:test:0-1"], 2, "exactly two images"),
    ],
)
def test_query_command_errors(index, args, code, message):
    result = CliRunner().invoke(cli, [*args, "--index", str(index)])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_claims_with_unknown_class_names_the_line(index, tmp_path):
    (tmp_path / "c.csv").write_text("image,class\nmnist:test:0,1\nmnist:test:1,12\n")
    result = CliRunner().invoke(
        cli, ["check", "--claims", str(tmp_path / "c.csv"), "--index", str(index)]
    )
    assert result.exit_code == 1 and "line 3: unknown class '12'" in result.output


def test_build_index_calibrates_on_non_digits_when_asked(tmp_path):
    # The distance rule, whose recall floor counts every true claim (this fake encoder puts
    # many digits nearer to another class, which the nearest-class rule rejects).
    result = _build(
        CliRunner(),
        tmp_path / "o",
        "--open-set",
        "200",
        "--min-recall",
        "0.9",
        "--rule",
        "distance",
    )
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "o")])
    assert "of calibration true claims; rejects" in info.output
    assert "no other class" not in info.output
    facts = json.loads(
        CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "o"), "--format", "json"]).output
    )
    assert facts["min_recall"] == 0.9 and facts["true_claims_accepted"] >= 0.9
    assert "200 non-digits" in facts["threshold_method"] and facts["rule"] == "distance"
    assert f"rejects {facts['open_set_rejected']:.4f}" in info.output


def test_build_index_answers_by_the_nearest_class_rule_by_default(tmp_path):
    result = _build(CliRunner(), tmp_path / "n")
    assert result.exit_code == 0, result.output
    info = CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "n"), "--format", "json"])
    assert json.loads(info.output)["rule"] == "nearest-class"
    info = CliRunner().invoke(cli, ["info", "--index", str(tmp_path / "n")])
    assert "and no other class with as many nearer" in info.output
    # Claims that another class is nearer to are rejected, and say which class.
    claims = tmp_path / "claims.csv"
    claims.write_text(
        "image,class\n" + "".join(f"mnist:test:{i},{c}\n" for i in range(40) for c in "0123456789")
    )
    out = CliRunner().invoke(
        cli, ["check", "--claims", str(claims), "--index", str(tmp_path / "n"), "--format", "json"]
    )
    results = json.loads(out.output)["results"]
    nearer = [r for r in results if r["nearer_class"] is not None]
    assert nearer and all(not r["is_member"] and r["nearer_class"] != r["class"] for r in nearer)
    assert any(r["is_member"] for r in results)


def test_serve_refuses_bad_settings_before_starting(tmp_path, monkeypatch):
    monkeypatch.delenv("SIAMINDEX_TOKEN", raising=False)
    short = tmp_path / "short"
    short.write_text("abc")
    cases = [
        (["--host", "0.0.0.0", "--index", str(tmp_path / "x")], 2, "give --token-file"),
        (["--token-file", str(short)], 2, "holds 3 characters; use a token of 16 or more"),
        (["--token-file", str(tmp_path / "none")], 2, "cannot read"),
        (["--index", str(tmp_path / "missing")], 1, "No index at"),
        (["--port", "70000"], 2, "70000 is not in the range"),
        (["--workers", "0"], 2, "0 is not in the range 1<=x<=64"),
    ]
    for args, code, message in cases:
        result = CliRunner().invoke(cli, ["serve", *args])
        assert result.exit_code == code, (args, result.output)
        assert message in result.output and "Traceback" not in result.output
