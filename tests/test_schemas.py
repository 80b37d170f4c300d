"""Every command's machine output (JSON and CSV) against the pinned schemas in ``schemas.py``.

``train`` and ``evaluate`` are pinned where they run, in ``test_cli.py``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import schemas
from click.testing import CliRunner
from schemas import assert_schema

from siamindex.cli import cli
from siamindex.query import CHECK_CSV_HEADER

TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"


def _run(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_idx_dir):
    path = tmp_path_factory.mktemp("schemas") / "idx"
    output = _run(
        "build-index", "--index", str(path), "--encoder", str(TINY_ENCODER),
        "--data", str(small_idx_dir), "--splits", "test", "-q", "--format", "json",
    )  # fmt: skip
    return path, json.loads(output)


def test_build_and_info(built):
    path, build = built
    assert_schema(build, schemas.BUILD)
    assert_schema(json.loads(_run("info", "--index", str(path), "--format", "json")), schemas.INFO)


def test_query_json_and_csv(built):
    path, _ = built
    base = ["query", "mnist:test:0-1", "--index", str(path), "-k", "2"]
    assert_schema(json.loads(_run(*base, "--format", "json")), schemas.QUERY)
    rows = list(csv.reader(io.StringIO(_run(*base, "--format", "csv"))))
    assert rows[0] == schemas.QUERY_CSV and len(rows) == 5
    for row in rows[1:]:
        record = dict(zip(rows[0], row, strict=True))
        int(record["rank"]), int(record["id"]), float(record["distance"])
        float(record["probability"])


def test_check_json_and_csv(built, tmp_path):
    path, _ = built
    (tmp_path / "claims.csv").write_text(
        "image,class,true_class\nmnist:test:0,7,7\nmnist:test:1,3,2\n"
    )
    base = ["check", "--claims", str(tmp_path / "claims.csv"), "--index", str(path)]
    assert_schema(json.loads(_run(*base, "--format", "json")), schemas.CHECK)
    rows = list(csv.reader(io.StringIO(_run(*base, "--format", "csv"))))
    assert rows[0] == schemas.CHECK_CSV == list(CHECK_CSV_HEADER) and len(rows) == 3
    for row in rows[1:]:
        record = dict(zip(rows[0], row, strict=True))
        assert record["member"] in ("true", "false")
        assert record["threshold_kind"] in ("global", "per-class")
        for name in ("distance", "support_distance", "threshold", "probability"):
            float(record[name])
        int(record["nearest_id"])


def test_compare_add_remove(built, tmp_path):
    path, _ = built
    compared = _run(
        "compare", "mnist:test:0", "mnist:test:1", "--index", str(path), "--format", "json"
    )
    assert_schema(json.loads(compared), schemas.COMPARE)
    added = json.loads(
        _run("add", "mnist:test:5", "--index", str(path), "--class", "1", "--format", "json")
    )
    assert_schema(added, schemas.ADD)
    assert added["ids"] == [300] and added["count"] == 301 and added["class"] == "1"
    removed = json.loads(_run("remove", "--index", str(path), "--ids", "300,4", "--format", "json"))
    assert_schema(removed, schemas.REMOVE)
    assert removed["removed"] == [4, 300] and removed["count"] == 299


def test_a_renamed_or_retyped_field_fails_the_pin():
    good = {"first": "a", "second": "b", "distance": 0.5, "threshold": 0.4, "same": False}
    assert_schema(good, schemas.COMPARE)
    for bad in (
        {**{k: v for k, v in good.items() if k != "same"}, "is_same": False},  # renamed
        {k: v for k, v in good.items() if k != "threshold"},  # dropped
        {**good, "same": "no"},  # retyped
        {**good, "distance": True},  # a bool is not a number here
    ):
        with pytest.raises(AssertionError):
            assert_schema(bad, schemas.COMPARE)
