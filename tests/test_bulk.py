"""check --claims --out: chunked checks give exactly check's answers and summary."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from siamindex import bulk
from siamindex.cli import cli
from siamindex.errors import DataError


def write_claims(path, test, count, blank_every=0):
    lines = ["image,class,true_class"]
    for i in range(count):
        truth = int(test.labels[i])
        claimed = truth if i % 2 == 0 else (truth + 1 + i % 9) % 10
        lines.append(f"mnist:test:{i},{claimed},{truth}")
        if blank_every and i % blank_every == 0:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_plan_chunks_covers_every_line_once(tmp_path, mnist_test):
    path = write_claims(tmp_path / "c.csv", mnist_test, 95, blank_every=10)
    chunks = bulk.plan_chunks(path, claims=20)
    assert sum(c.lines for c in chunks) == 95 + 10  # data and blank lines, once each
    assert chunks[0].first_line == 2 and chunks[0].header == "image,class,true_class"
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.first_line == before.first_line + before.lines


def test_chunked_check_is_the_whole_check(tmp_path, tiny_index, mnist_test, monkeypatch):
    path = write_claims(tmp_path / "claims.csv", mnist_test, 230, blank_every=50)
    runner = CliRunner()
    whole = runner.invoke(
        cli, ["check", "--claims", str(path), "--index", str(tiny_index), "--format", "csv", "-q"]
    )
    assert whole.exit_code == 0, whole.output
    monkeypatch.setattr(bulk, "CHUNK_CLAIMS", 60)
    out = tmp_path / "answers.csv"
    chunked = runner.invoke(
        cli,
        [
            "check",
            "--claims",
            str(path),
            "--index",
            str(tiny_index),
            "--out",
            str(out),
            "--format",
            "json",
        ],
    )
    assert chunked.exit_code == 0, chunked.output
    assert out.read_text() == whole.stdout
    report = json.loads(chunked.stdout)
    in_memory = runner.invoke(
        cli, ["check", "--claims", str(path), "--index", str(tiny_index), "--format", "json"]
    )
    assert report["summary"] == json.loads(in_memory.stdout)["summary"]
    assert report["claims"] == 230


def test_a_bad_line_names_its_line_and_writes_nothing(tmp_path, tiny_index, mnist_test):
    path = write_claims(tmp_path / "claims.csv", mnist_test, 120)
    lines = path.read_text().splitlines()
    lines[101] = "mnist:test:100,seven,7"  # line 102 of the file
    path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answers.csv"
    settings = bulk.CheckSettings(str(tiny_index))
    with pytest.raises(DataError, match=r"line 102: unknown class 'seven'"):
        bulk.check_claims(path, out, settings)
    assert not out.exists() and not list(tmp_path.glob(".answers*"))
    lines[101] = "mnist:test:100,7"  # too few fields
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"line 102: 2 fields but the header has 3"):
        bulk.check_claims(path, out, settings)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--out", "x.csv", "--class", "7", "mnist:test:0"],
            "--out writes the answers to --claims",
        ),
        (["--claims", "c.csv", "--engine", "ray"], "add --out FILE.csv"),
        (
            ["--claims", "c.csv", "--out", "x.csv", "--workers", "2"],
            "--workers applies to --engine ray",
        ),
    ],
)
def test_bad_bulk_options_get_one_line(tmp_path, tiny_index, args, message):
    result = CliRunner().invoke(cli, ["check", "--index", str(tiny_index), *args])
    assert result.exit_code == 2 and message in result.output


def test_an_empty_claims_file_gets_one_line(tmp_path, tiny_index):
    path = tmp_path / "c.csv"
    path.write_text("image,class\n")
    result = CliRunner().invoke(
        cli,
        [
            "check",
            "--claims",
            str(path),
            "--index",
            str(tiny_index),
            "--out",
            str(tmp_path / "o.csv"),
        ],
    )
    assert result.exit_code == 1 and "has a header but no claims" in result.output
    assert not (tmp_path / "o.csv").exists()


def test_chunked_check_passes_ef_search_to_each_chunk(
    tmp_path, tiny_train_bundles, mnist_test, tiny_index
):
    index = tiny_train_bundles["hnsw"]
    path = write_claims(tmp_path / "claims.csv", mnist_test, 150)
    runner = CliRunner()
    base = ["check", "--claims", str(path), "--index", str(index), "-q"]
    answers = {}
    for ef in ("1", "400"):
        whole = runner.invoke(cli, [*base, "--format", "csv", "--ef-search", ef])
        assert whole.exit_code == 0, whole.output
        out = tmp_path / f"answers-{ef}.csv"
        chunked = runner.invoke(cli, [*base, "--out", str(out), "--ef-search", ef])
        assert chunked.exit_code == 0, chunked.output
        assert out.read_text() == whole.stdout
        answers[ef] = whole.stdout
    assert answers["1"] != answers["400"]  # the setting reached the search
    out = ["--out", str(tmp_path / "x.csv"), "--ef-search", "8"]
    flat = runner.invoke(cli, ["check", "--claims", str(path), "--index", str(tiny_index), *out])
    assert flat.exit_code == 2 and "ef_search applies to HNSW" in flat.output
    assert not (tmp_path / "x.csv").exists()
