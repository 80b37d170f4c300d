from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from siamindex.cli import cli

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
        ["train", "--encoder", "transformer"],
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
        (["train", "--encoder", "transformer"], 2, "'transformer' is not one of 'seed-mlp', 'cnn'"),
        (["train", "--out", "model.h5"], 2, "must end in .keras"),
        (["train", "--batch-size", "1"], 2, "1 is not in the range x>=2"),
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
    assert report["sizes"] == {"train": 900, "val": 100, "test": 300}
    assert out.is_file() and out.with_suffix(".json").is_file()

    result = runner.invoke(
        cli,
        ["evaluate", "--encoder", str(out), "--data", str(small_idx_dir), "--format", "json"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    measured = json.loads(result.output)
    assert measured["sizes"] == {"stored": 1000, "queries": 300}
    for name in ("encoder", "raw_pixels"):
        assert 0 < measured[name]["one_nn_accuracy"] <= 1
        assert 0 < measured[name]["map_at_r"] <= 1
        assert measured[name]["threshold"] > 0
        assert measured[name]["membership"]["claims"] == 600
    assert measured["raw_pixels"]["pair_accuracy"] is None
    # Raw-pixel 1-NN on the first 1,000 MNIST train images is ~0.85-0.9 for these 300 queries.
    assert 0.8 < measured["raw_pixels"]["one_nn_accuracy"] < 0.95

    table = runner.invoke(cli, ["evaluate", "--encoder", str(out), "--data", str(small_idx_dir)])
    assert table.exit_code == 0 and "1-NN accuracy" in table.output and "raw pixels" in table.output


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    from siamindex import model

    return model.save_encoder(
        model.build_encoder("cnn", embedding_dim=8),
        tmp_path_factory.mktemp("cli-enc") / "encoder.keras",
    )


def test_build_index_info_add_remove(tmp_path, tiny_encoder, small_idx_dir):
    runner = CliRunner()
    name = str(tmp_path / "idx")
    result = runner.invoke(
        cli,
        [
            "build-index",
            "--name",
            name,
            "--encoder",
            str(tiny_encoder),
            "--data",
            str(small_idx_dir),
            "--splits",
            "train",
            "-q",
            "--format",
            "json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    built = json.loads(result.output)
    assert built["count"] == 1000 and set(built["build_seconds"]) == {
        "load",
        "embed",
        "add",
        "calibrate",
        "write",
    }

    result = runner.invoke(cli, ["info", name])
    assert result.exit_code == 0 and "1000 (train 1000)" in result.output

    result = runner.invoke(
        cli, ["add", name, "mnist:test:0-2", "--label", "7"], catch_exceptions=False
    )
    assert result.exit_code == 0 and "ids 1000-1002" in result.output
    result = runner.invoke(cli, ["remove", name, "--ids", "3,1001"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    facts = json.loads(runner.invoke(cli, ["info", name, "--format", "json"]).output)
    assert facts["count"] == 1001 and facts["per_split"] == {"added": 2, "train": 999}


def test_index_names_resolve_under_the_indexes_folder(
    tmp_path, tiny_encoder, small_idx_dir, monkeypatch
):
    monkeypatch.setenv("SIAMINDEX_INDEXES", str(tmp_path / "store"))
    result = CliRunner().invoke(
        cli,
        [
            "build-index",
            "--name",
            "digits",
            "--encoder",
            str(tiny_encoder),
            "--data",
            str(small_idx_dir),
            "--splits",
            "test",
            "-q",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "store" / "digits" / "manifest.json").is_file()
    assert CliRunner().invoke(cli, ["info", "digits"]).exit_code == 0


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["info", "/nonexistent/idx"], 1, "No index at '/nonexistent/idx'"),
        (["build-index", "--splits", "train,valid"], 2, "must list train and/or test"),
        (["build-index", "--batch-size", "0"], 2, "0 is not in the range x>=1"),
        (["build-index", "--target-precision", "1.5"], 2, "1.5 is not in the range"),
        (["remove", "x", "--ids", "5-2"], 2, "'5-2' is not an id or range"),
        (["remove", "x", "--ids", "abc"], 2, "'abc' is not an id or range"),
        (["add", "x", "mnist:test:0", "--label", "1"], 1, "No index at"),
        (["add", "x", "--label", "1"], 2, "Missing argument 'IMAGES...'"),
    ],
)
def test_index_command_errors(args, code, message, tmp_path, monkeypatch):
    monkeypatch.setenv("SIAMINDEX_INDEXES", str(tmp_path))
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_build_index_refuses_to_overwrite_and_rejects_bad_types(
    tmp_path, tiny_encoder, small_idx_dir
):
    runner = CliRunner()
    base = [
        "build-index",
        "--name",
        str(tmp_path / "i"),
        "--encoder",
        str(tiny_encoder),
        "--data",
        str(small_idx_dir),
        "--splits",
        "test",
        "-q",
    ]
    assert runner.invoke(cli, base).exit_code == 0
    before = sorted(p.name for p in tmp_path.iterdir())
    again = runner.invoke(cli, base)
    assert again.exit_code == 1 and "already exists; pass --force" in again.output
    bad = runner.invoke(cli, [*base, "--force", "--index-type", "IVF999999,Flat"])
    assert bad.exit_code == 2 and "cannot train index type" in bad.output
    bogus = runner.invoke(cli, [*base, "--force", "--index-type", "Nonsense"])
    assert bogus.exit_code == 2 and "FAISS rejects index type 'Nonsense'" in bogus.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_info_on_a_file_path(tmp_path):
    (tmp_path / "afile").write_text("x")
    result = CliRunner().invoke(cli, ["info", str(tmp_path / "afile")])
    assert result.exit_code == 1 and "is a file, not an index folder" in result.output


def test_cli_choice_lists_mirror_the_library():
    from siamindex import cli as cli_module
    from siamindex.model import ENCODERS
    from siamindex.training import SAMPLERS

    assert cli_module.ENCODER_NAMES == ENCODERS
    assert cli_module.SAMPLER_NAMES == SAMPLERS
