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
