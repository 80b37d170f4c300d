"""Queries, membership checks and comparisons (issue: queries and checks)."""

from __future__ import annotations

import csv
import gzip
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_idx
from PIL import Image

from siamindex import model
from siamindex.cli import cli
from siamindex.errors import DataError
from siamindex.index import Index
from siamindex.inputs import load_images, read_claims


@pytest.fixture(scope="module")
def index(tmp_path_factory, small_idx_dir):
    import keras

    keras.utils.set_random_seed(1)
    folder = tmp_path_factory.mktemp("query")
    encoder = model.save_encoder(model.build_encoder("cnn", embedding_dim=8), folder / "e.keras")
    return Index.build(
        folder / "idx", encoder=encoder, data_dir=small_idx_dir, splits=("train",), progress=False
    )


@pytest.fixture
def queries(mnist_test):
    return mnist_test.images[2000:2030], mnist_test.labels[2000:2030]


def test_query_equals_brute_force(index, queries):
    images, _ = queries
    results = index.query(images, k=4)
    vectors = index.embed(images)
    stored = index.store.rows.embeddings
    distances = np.linalg.norm(vectors[:, None] - stored[None], axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :4]
    for q, result in enumerate(results):
        assert [m.id for m in result.matches] == list(index.store.rows.ids[order[q]])
        np.testing.assert_allclose(
            [m.distance for m in result.matches], distances[q, order[q]], atol=1e-4
        )
        assert [m.rank for m in result.matches] == [1, 2, 3, 4]
        nearest_label = index.store.class_names[index.store.rows.labels[order[q, 0]]]
        assert result.matches[0].label == nearest_label
        # Predicted only when its 3rd nearest member of that class is within the threshold.
        same_class = np.sort(
            distances[q, index.store.rows.labels == index.store.rows.labels[order[q, 0]]]
        )
        assert result.predicted == (
            nearest_label if same_class[2] <= index.store.threshold else None
        )


def test_query_open_set_says_no_match(index, queries):
    images, _ = queries
    saved = index.store.attrs["threshold"]
    try:
        index.store.attrs["threshold"] = 0.0
        assert all(r.predicted is None for r in index.query(images[:3], k=1))
        index.store.attrs["threshold"] = 1e9
        assert all(r.predicted is not None for r in index.query(images[:3], k=1))
    finally:
        index.store.attrs["threshold"] = saved


def test_check_equals_brute_force(index, queries):
    images, labels = queries
    classes = [str((label + i) % 10) for i, label in enumerate(labels)]
    results = index.check(images, classes)
    vectors = index.embed(images)
    stored, stored_labels = index.store.rows.embeddings, index.store.rows.labels
    for i, result in enumerate(results):
        members = np.flatnonzero(stored_labels == int(classes[i]))
        d = np.linalg.norm(stored[members] - vectors[i], axis=1)
        assert result.nearest_id == index.store.rows.ids[members[np.argmin(d)]]
        assert result.distance == pytest.approx(d.min(), abs=1e-4)
        third = np.sort(d)[2]  # the index's support is 3: three members must be that near
        assert result.support == 3
        assert result.support_distance == pytest.approx(third, abs=1e-4)
        assert result.is_member == (third <= index.store.threshold)
        assert result.threshold_kind == "global"


def test_check_per_class_thresholds(index, queries):
    images, labels = queries
    classes = [str(v) for v in labels]
    results = index.check(images, classes, per_class=True)
    for result in results:
        assert result.threshold == pytest.approx(index.store.class_thresholds[int(result.group)])
        assert result.threshold_kind == "per-class"


def test_check_unknown_class(index, queries):
    with pytest.raises(DataError, match="Unknown class 'eleven'"):
        index.check(queries[0][:1], ["eleven"])


@pytest.mark.parametrize("k", [0, 1001])
def test_query_k_out_of_range(index, queries, k):
    with pytest.raises(DataError, match="k must be between 1 and the index size"):
        index.query(queries[0][:1], k=k)


def test_compare(index, mnist_test):
    result = index.compare(mnist_test.images[0], mnist_test.images[0])
    assert result.distance == pytest.approx(0.0, abs=1e-5) and result.same
    # Pairs are judged by the pair threshold calibrated at build time, not the membership one.
    assert result.threshold == index.store.attrs["pair_threshold"] != index.store.threshold
    other = index.compare(mnist_test.images[0], mnist_test.images[1])
    assert other.same == (other.distance < other.threshold)


# -- input forms ---------------------------------------------------------------------------


def test_every_input_form(tmp_path, mnist_test):
    images = mnist_test.images[:6]
    Image.fromarray(images[0]).save(tmp_path / "gray.png")
    Image.fromarray(np.stack([images[1]] * 3, axis=-1)).save(tmp_path / "rgb.png")
    Image.fromarray(images[2]).save(tmp_path / "digit.jpg", quality=100)
    np.save(tmp_path / "one.npy", images[3])
    np.save(tmp_path / "stack.npy", images[:3])
    np.save(tmp_path / "float.npy", images[4].astype(np.float32) / 255.0)
    write_idx(tmp_path / "x-idx3-ubyte.gz", images[:2])
    write_idx(tmp_path / "raw-idx3-ubyte", images[:2], compress=False)
    loaded = load_images(
        [
            str(tmp_path / "gray.png"),
            str(tmp_path / "rgb.png"),
            str(tmp_path / "digit.jpg"),
            str(tmp_path / "one.npy"),
            str(tmp_path / "stack.npy"),
            f"{tmp_path / 'stack.npy'}:2",
            str(tmp_path / "float.npy"),
            str(tmp_path / "x-idx3-ubyte.gz"),
            str(tmp_path / "raw-idx3-ubyte"),
            "mnist:test:0-2",
            "mnist:test:5",
        ]
    )
    assert loaded.pixels.shape == (1 + 1 + 1 + 1 + 3 + 1 + 1 + 2 + 2 + 3 + 1, 28, 28)
    expected = [
        images[0],
        images[1],
        None,
        images[3],
        *images[:3],
        images[2],
        images[4],
        *images[:2],
        *images[:2],
        *images[:3],
        images[5],
    ]
    for i, want in enumerate(expected):
        if want is not None:  # JPEG is lossy
            np.testing.assert_array_equal(loaded.pixels[i], want, err_msg=loaded.names[i])
    assert np.abs(loaded.pixels[2].astype(int) - images[2]).mean() < 3
    assert loaded.names[4:7] == [f"{tmp_path / 'stack.npy'}:{i}" for i in range(3)]
    assert list(loaded.labels[-4:]) == list(mnist_test.labels[[0, 1, 2, 5]])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "does not exist"),
        (
            lambda p: (p / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"),
            "not a readable PNG/JPEG",
        ),
        (
            lambda p: np.save(p / "x.npy", np.zeros((3, 28, 27), np.uint8)),
            "expected (28, 28) or (n, 28, 28)",
        ),
        (lambda p: np.save(p / "x.npy", np.full((28, 28), np.nan, np.float32)), "NaN or infinite"),
        (lambda p: np.save(p / "x.npy", np.full((28, 28), np.inf)), "NaN or infinite"),
        (lambda p: np.save(p / "x.npy", np.full((28, 28), 2.0)), "expected 0..1"),
        (lambda p: np.save(p / "x.npy", np.full((28, 28), -3, np.int16)), "expected 0..255"),
        (lambda p: np.save(p / "x.npy", np.full((28, 28), 300, np.int32)), "expected 0..255"),
        (
            lambda p: np.save(p / "x.npy", np.array([None] * 4, dtype=object), allow_pickle=True),
            "holds Python objects",
        ),
        (lambda p: (p / "x.npy").write_bytes(b"nonsense"), "not a valid .npy"),
        (
            lambda p: (p / "x.idx").write_bytes(
                gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")
            ),
            "IDX label file",
        ),
    ],
)
def test_bad_image_inputs(tmp_path, make, message):
    make(tmp_path)
    name = next((p.name for p in tmp_path.iterdir()), "x.png")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_images([str(tmp_path / name)])


@pytest.mark.parametrize(
    "spec, message",
    [
        ("mnist:test:10000", "outside mnist:test"),
        ("mnist:valid:3", "unknown split"),
        ("mnist:test:5-2", "outside mnist:test"),
        ("mnist:oops", "unknown split"),
    ],
)
def test_bad_dataset_items(spec, message):
    with pytest.raises(DataError, match=message):
        load_images([spec])


# -- claims CSV ----------------------------------------------------------------------------


def test_claims_csv(tmp_path, mnist_test):
    np.save(tmp_path / "t.npy", mnist_test.images[:4])
    (tmp_path / "c.csv").write_text(
        "\ufeffimage,class,label\nt.npy:0,7,7\n\nt.npy:1,3,2\nmnist:test:2,1,\n", encoding="utf-8"
    )
    claims = read_claims(tmp_path / "c.csv")
    assert claims.classes == ["7", "3", "1"] and claims.labels == ["7", "2", None]
    assert claims.lines == [2, 4, 5]
    np.testing.assert_array_equal(claims.images.pixels, mnist_test.images[:3])


@pytest.mark.parametrize(
    "text, message",
    [
        ("picture,class\nx.png,1\n", "lacks column(s) image"),
        ("image,label\nx.png,1\n", "lacks column(s) class"),
        ("image,class\nmnist:test:0,1\nmnist:test:1\n", "line 3: 1 fields but the header has 2"),
        ("image,class\nmnist:test:0,1\nmnist:test:1,\n", "line 3: empty image or class"),
        ("image,class\nmnist:test:0,1\nmissing.png,4\n", "line 3: Image"),
        ("image,class\n", "has a header but no claims"),
        ("image,class\nmnist:test:0-3,1\n", "holds 4 images; name one"),
    ],
)
def test_malformed_claims(tmp_path, text, message):
    (tmp_path / "c.csv").write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_claims(tmp_path / "c.csv")


# -- through the CLI -----------------------------------------------------------------------


def test_query_cli_formats_parse(index, tmp_path):
    runner = CliRunner()
    base = ["query", "mnist:test:0-2", "--index", str(index.path), "-k", "3"]
    as_json = json.loads(
        runner.invoke(cli, [*base, "--format", "json"], catch_exceptions=False).output
    )
    assert [len(r["matches"]) for r in as_json] == [3, 3, 3]
    rows = list(csv.DictReader(io.StringIO(runner.invoke(cli, [*base, "--format", "csv"]).output)))
    assert len(rows) == 9 and rows[0]["query"] == "mnist:test:0" and float(rows[0]["distance"]) >= 0
    assert [int(r["id"]) for r in rows[:3]] == [m["id"] for m in as_json[0]["matches"]]
    table = runner.invoke(cli, base).output
    assert "predicted" in table and "mnist:test:2" in table


def test_check_cli_with_claims_and_summary(index, tmp_path):
    lines = ["image,class,label"] + [
        f"mnist:test:{i},{c},{t}"
        for i, (c, t) in enumerate([("7", "7"), ("1", "2"), ("1", "1"), ("3", "0")])
    ]
    (tmp_path / "claims.csv").write_text("\n".join(lines) + "\n")
    runner = CliRunner()
    base = ["check", "--claims", str(tmp_path / "claims.csv"), "--index", str(index.path)]
    result = runner.invoke(cli, [*base, "--format", "json"], catch_exceptions=False)
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert [r["group"] for r in data["results"]] == ["7", "1", "1", "3"]
    summary = data["summary"]
    assert summary["claims"] == 4
    assert summary["true_positive"] + summary["false_negative"] == 2  # two true claims
    assert set(summary["per_class"]) == {"1", "3", "7"}
    rows = list(csv.DictReader(io.StringIO(runner.invoke(cli, [*base, "--format", "csv"]).output)))
    assert [r["member"] for r in rows] == [str(r["is_member"]).lower() for r in data["results"]]
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
            str(index.path),
            "--per-class",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0 and "per-class" in result.output and "2 claims" in result.output


def test_compare_cli(index):
    result = CliRunner().invoke(
        cli,
        ["compare", "mnist:test:0", "mnist:test:0", "--index", str(index.path), "--format", "json"],
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
        (["query", "mnist:test:0", "--nprobe", "4"], 2, "nprobe does not apply"),
        (["check", "mnist:test:0"], 2, "Give either --class C"),
        (["check", "--class", "1"], 2, "--class needs IMAGE arguments"),
        (["check", "--class", "eleven", "mnist:test:0"], 1, "Unknown class 'eleven'"),
        (["compare", "mnist:test:0", "mnist:test:0-1"], 2, "exactly two images"),
    ],
)
def test_query_command_errors(index, args, code, message):
    result = CliRunner().invoke(cli, [*args, "--index", str(index.path)])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output


def test_claims_with_unknown_class_names_the_line(index, tmp_path):
    (tmp_path / "c.csv").write_text("image,class\nmnist:test:0,1\nmnist:test:1,12\n")
    result = CliRunner().invoke(
        cli, ["check", "--claims", str(tmp_path / "c.csv"), "--index", str(index.path)]
    )
    assert result.exit_code == 1 and "line 3: unknown class '12'" in result.output
