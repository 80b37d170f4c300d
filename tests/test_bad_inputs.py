"""The bad-input matrix: every case through the real CLI gives a non-zero exit (2 for usage,
1 for data), one error line naming the problem, no traceback, and leaves every index file as it
was (hashes compared before and after)."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import write_idx
from PIL import Image

from siamindex.build import BuildSettings, build_index
from siamindex.cli import cli

INDEX_COMMANDS = (
    "query",
    "check",
    "compare",
    "add",
    "remove",
    "relabel",
    "audit",
    "info",
    "report",
)
TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"


@pytest.fixture(scope="module")
def world(tmp_path_factory, mnist_test, mnist_train):
    """An index named 'idx' under its own indexes folder, and a folder of bad files."""
    root = tmp_path_factory.mktemp("bad-inputs")
    indexes, files = root / "indexes", root / "files"
    files.mkdir()
    encoder = shutil.copyfile(TINY_ENCODER, root / "enc.keras")
    data = root / "data"
    write_idx(
        data / "train-images-idx3-ubyte.gz", mnist_train.images[:300]
    ) if data.mkdir() is None else None
    write_idx(data / "train-labels-idx1-ubyte.gz", mnist_train.labels[:300].astype(np.uint8))
    write_idx(data / "t10k-images-idx3-ubyte.gz", mnist_test.images[:100])
    write_idx(data / "t10k-labels-idx1-ubyte.gz", mnist_test.labels[:100].astype(np.uint8))
    build_index(
        BuildSettings(encoder=encoder, index=indexes / "idx", data_dir=data, progress=False)
    )

    digit = mnist_test.images[0]
    (files / "empty.png").write_bytes(b"")
    (files / "empty.npy").write_bytes(b"")
    (files / "empty-idx3-ubyte").write_bytes(b"")
    Image.fromarray(digit).save(files / "good.png")
    good = (files / "good.png").read_bytes()
    (files / "truncated.png").write_bytes(good[: len(good) // 2])
    (files / "truncated-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\x00" * 100
    )
    (files / "magic-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 40)
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(files / "big.png")
    Image.fromarray(np.zeros((20, 28, 4), np.uint8), mode="RGBA").save(files / "rgba-20x28.png")
    (files / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3)
    np.save(files / "object.npy", np.array([digit, None], dtype=object), allow_pickle=True)
    np.save(files / "nan.npy", np.full((28, 28), np.nan, np.float32))
    np.save(files / "inf.npy", np.full((2, 28, 28), np.inf))
    np.save(files / "rank4.npy", np.zeros((1, 1, 28, 28), np.uint8))
    np.save(files / "negative.npy", np.full((28, 28), -5, np.int32))
    np.save(files / "over255.npy", np.full((28, 28), 300, np.int32))
    np.save(files / "float-over-1.npy", np.full((28, 28), 7.5, np.float32))
    np.save(files / "complex.npy", np.zeros((28, 28), np.complex64))
    np.save(files / "no-images.npy", np.zeros((0, 28, 28), np.uint8))
    np.save(files / "stack.npy", np.stack([digit, digit]))
    (files / "folder").mkdir()
    write_idx(files / "labels-idx1-ubyte", np.arange(5, dtype=np.uint8))
    (files / "notes.txt").write_text("hello")

    (files / "no-class.csv").write_text("image,label\nmnist:test:0,7\n")
    (files / "bad-class.csv").write_text("image,class\nmnist:test:0,7\nmnist:test:1,eleven\n")
    (files / "blank.csv").write_text("image,class\n\n\n")
    (files / "utf16.csv").write_bytes("image,class\nmnist:test:0,7\n".encode("utf-16"))
    (files / "fields.csv").write_text("image,class\nmnist:test:0,7\nmnist:test:1,2,3\n")
    (files / "empty-field.csv").write_text("image,class\nmnist:test:0,\n")
    (files / "nul.csv").write_text("image,class\nmnist:test:0,7\x00\n")
    (files / "bad-label.csv").write_text("image,class,true_class\nmnist:test:0,7,seven\n")
    (files / "bad-image.csv").write_text("image,class\nmnist:test:0,7\nnope.png,1\n")

    counts = root / "counts"
    counts.mkdir()
    write_idx(counts / "train-images-idx3-ubyte.gz", mnist_train.images[:10])
    write_idx(counts / "train-labels-idx1-ubyte.gz", mnist_train.labels[:9].astype(np.uint8))
    size = root / "size"
    size.mkdir()
    write_idx(size / "train-images-idx3-ubyte.gz", np.zeros((4, 32, 32), np.uint8))
    write_idx(size / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    (root / "a-file").write_text("not an index")
    (root / "junk.keras").write_bytes(gzip.compress(b"junk"))
    return root


F = "{files}"
CASES = [
    # (args, exit code, part of the message)
    (["query", f"{F}/empty.png"], 1, "not a readable PNG/JPEG"),
    (["query", f"{F}/empty.npy"], 1, "not a valid .npy"),
    (["query", f"{F}/empty-idx3-ubyte"], 1, "bad magic number empty"),
    (["query", f"{F}/truncated.png"], 1, "not a readable PNG/JPEG"),
    (["query", f"{F}/truncated-idx3-ubyte"], 1, "is truncated"),
    (["query", f"{F}/magic-idx3-ubyte"], 1, "bad magic number"),
    (["query", f"{F}/big.png"], 1, "big.png': The image has no ink that stands out"),
    (["query", f"{F}/big.png", "--prepare", "none"], 1, "is 32x32; expected 28x28. Pass --prep"),
    (["query", f"{F}/rgba-20x28.png", "--prepare", "none"], 1, "is 28x20; expected 28x28"),
    (["query", f"{F}/rgba-20x28.png"], 1, "has no ink that stands out"),
    (["query", "mnist:test:0", "--prepare", "big"], 2, "'big' is not one of 'auto', 'mnist'"),
    (["query", f"{F}/garbage.jpg"], 1, "not a readable PNG/JPEG"),
    (["query", f"{F}/object.npy"], 1, "holds Python objects"),
    (["query", f"{F}/nan.npy"], 1, "NaN or infinite"),
    (["query", f"{F}/inf.npy"], 1, "NaN or infinite"),
    (["query", f"{F}/rank4.npy"], 1, "expected (28, 28) or (n, 28, 28)"),
    (["query", f"{F}/negative.npy"], 1, "range -5..-5; expected 0..255"),
    (["query", f"{F}/over255.npy"], 1, "range 300..300; expected 0..255"),
    (["query", f"{F}/float-over-1.npy"], 1, "expected 0..1"),
    (["query", f"{F}/complex.npy"], 1, "dtype complex64"),
    (["query", f"{F}/no-images.npy"], 1, "holds no images"),
    (["query", f"{F}/stack.npy:9"], 1, "row 9 is past the end of a stack of 2"),
    (["query", f"{F}/missing.png"], 1, "does not exist"),
    (["query", f"{F}/folder"], 1, "is a folder"),
    (["query", f"{F}/labels-idx1-ubyte"], 1, "IDX label file"),
    (["query", f"{F}/notes.txt"], 1, "bad magic number"),
    (["query", "mnist:test:10000"], 1, "outside mnist:test"),
    (["query", "mnist:valid:1"], 1, "unknown split 'valid'"),
    (["query", "mnist:"], 1, "is not a dataset item"),
    (["query", "mnist:test:0", "-k", "0"], 2, "0 is not in the range x>=1"),
    (["query", "mnist:test:0", "-k", "100000"], 1, "k must be between 1 and the index size"),
    (["query", "mnist:test:0", "--index", "nosuch"], 1, "No index at"),
    (["query", "mnist:test:0", "--index", "{root}/a-file"], 1, "is a file, not an index folder"),
    (
        ["query", "mnist:test:0", "--nprobe", "3"],
        2,
        "nprobe applies to IVF index types only; this index is 'flat'",
    ),
    (["query", "mnist:test:0", "--format", "xml"], 2, "'xml' is not one of"),
    (["query"], 2, "Missing argument 'IMAGES...'"),
    (["check", "--claims", f"{F}/no-class.csv"], 1, "lacks column(s) class"),
    (["check", "--claims", f"{F}/bad-class.csv"], 1, "line 3: unknown class 'eleven'"),
    (["check", "--claims", f"{F}/blank.csv"], 1, "has a header but no claims"),
    (["check", "--claims", f"{F}/utf16.csv"], 1, "not a UTF-8 text CSV"),
    (["check", "--claims", f"{F}/fields.csv"], 1, "line 3: 3 fields but the header has 2"),
    (["check", "--claims", f"{F}/empty-field.csv"], 1, "line 2: empty image or class"),
    (["check", "--claims", f"{F}/nul.csv"], 1, "line 2: contains control characters"),
    (["check", "--claims", f"{F}/bad-label.csv"], 1, "line 2: unknown true_class 'seven'"),
    (["check", "--claims", f"{F}/bad-image.csv"], 1, "line 3: Image"),
    (["check", "--claims", f"{F}/missing.csv"], 1, "does not exist"),
    (["check", "mnist:test:0"], 2, "Give either --class C"),
    (["check", "--class", "7"], 2, "--class needs IMAGE arguments"),
    (["check", "--class", "7", "--claims", f"{F}/blank.csv"], 2, "Give either --class C"),
    (["check", "--class", "eleven", "mnist:test:0"], 1, "Unknown class 'eleven'"),
    (["train", "--data", "{root}/counts", "-q"], 1, "10 images but 9 labels"),
    (["train", "--data", "{root}/size", "-q"], 1, "expected (n, 28, 28)"),
    (["train", "--margin", "0"], 2, "0.0 is not in the range x>0"),
    (["train", "--margin", "-1"], 2, "is not in the range x>0"),
    (["train", "--epochs", "0"], 2, "0 is not in the range x>=1"),
    (["train", "--batch-size", "1"], 2, "1 is not in the range x>=2"),
    (["train", "--encoder", "resnet"], 2, "'resnet' is not one of"),
    (["train", "--sampler", "random"], 2, "'random' is not one of"),
    (["train", "--val-fraction", "0"], 2, "is not in the range 0<x<1"),
    (["evaluate", "--encoder", "{root}/junk.keras"], 1, "not a .keras model file"),
    (
        ["build-index", "--index", "idx", "--encoder", "{root}/enc.keras"],
        1,
        "already exists; pass --force",
    ),
    (["build-index", "--index", "x", "--index-type", "NotAType"], 2, "FAISS rejects index type"),
    (["build-index", "--splits", "valid"], 2, "must list train and/or test"),
    (["build-index", "--batch-size", "0"], 2, "0 is not in the range x>=1"),
    (["build-index", "--index", "x", "--rule", "vote"], 2, "'vote' is not one of"),
    (["info", "--index", "nosuch"], 1, "No index at"),
    (["info", "--index", "{root}/a-file"], 1, "is a file, not an index folder"),
    (["add", "mnist:test:0", "--class", "eleven"], 1, "Unknown class 'eleven'"),
    (["add", f"{F}/nan.npy", "--class", "3"], 1, "NaN or infinite"),
    (["add", "--class", "3"], 2, "Missing argument 'IMAGES...'"),
    (["remove", "--ids", "abc"], 2, "'abc' is not an id or range"),
    (["remove", "--ids", "9-2"], 2, "'9-2' is not an id or range"),
    (["remove", "--ids", "123456"], 1, "are not in index"),
    (["remove", "--ids", "0-399"], 1, "would leave an empty index"),
    (["relabel", "--ids", "3", "--class", "eleven"], 1, "Unknown class 'eleven'"),
    (["relabel", "--ids", "123456", "--class", "3"], 1, "are not in index"),
    (["relabel", "--ids", "x", "--class", "3"], 2, "'x' is not an id or range"),
    (["relabel", "--ids", "3"], 2, "Missing option '--class'"),
    (["audit", "-k", "0"], 2, "0 is not in the range 1<=x<=1000"),
    (["audit", "--top", "0"], 2, "0 is not in the range x>=1"),
    (["audit", "--figure", "{root}/out.jpg"], 2, "out.jpg' must end in .png"),
    (["audit", "--index", "nosuch"], 1, "No index at"),
    (["train", "--classes", "0-12", "-q"], 1, "Unknown class '12' in '0-12'"),
    (["train", "--classes", "5-2", "-q"], 1, "Range '5-2' runs backwards"),
    (["train", "--classes", ",", "-q"], 1, "No class named in ','"),
    (["train", "--labelled", "5"], 2, "5 is not in the range x>=10"),
    (["train", "--head", "-1"], 2, "-1 is not in the range x>=0"),
    (
        ["train", "--architecture", "article-mlp", "--head", "16"],
        2,
        "projection head needs --sampler in-batch",
    ),
    (["compare", "mnist:test:0"], 2, "Missing argument 'SECOND'"),
    (["compare", "mnist:test:0", f"{F}/stack.npy"], 2, "exactly two images"),
    (
        ["compare", "mnist:test:0", "mnist:test:1", "--encoder", "{root}/missing.keras"],
        1,
        "does not exist",
    ),
    (["build-index", "--index", "x", "--data", "mnist-aug:0"], 1, "asks for no images"),
    (["build-index", "--index", "x", "--data", "mnist-aug:many"], 1, "mnist-aug:N[:SEED]"),
    (["build-index", "--index", "x", "--workers", "2"], 2, "--workers applies to --engine ray"),
    (["build-index", "--index", "x", "--engine", "spark"], 2, "'spark' is not one of"),
    (["check", "--claims", "{files}/bad-class.csv", "--engine", "ray"], 2, "add --out FILE.csv"),
    (["check", "--class", "7", "mnist:test:0", "--out", "{root}/o.csv"], 2, "add --claims"),
    (
        ["check", "--claims", "{files}/bad-class.csv", "--out", "{root}/o.csv"],
        1,
        "line 3: unknown class 'eleven'",
    ),
    (
        ["check", "--claims", "{files}/fields.csv", "--out", "{root}/o.csv"],
        1,
        "line 3: 3 fields but the header has 2",
    ),
    (["check", "--claims", "{files}/blank.csv", "--out", "{root}/o.csv"], 1, "no claims"),
    (["nonsense"], 2, "No such command 'nonsense'"),
]


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        if path.is_file() and not path.is_symlink()
        else f"-> {path.resolve().name}"
        for path in sorted(folder.rglob("*"))
        if path.is_file() or path.is_symlink()
    }


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40
    assert len({tuple(args) for args, _, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("args, code, message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input(world, monkeypatch, args, code, message):
    monkeypatch.setenv("SIAMINDEX_INDEXES", str(world / "indexes"))
    monkeypatch.chdir(world)
    args = [a.replace("{files}", str(world / "files")).replace("{root}", str(world)) for a in args]
    if "--index" not in args and args[0] in INDEX_COMMANDS:
        args += ["--index", "idx"]
    before = _fingerprint(world / "indexes")
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, result.output
    assert message in errors[0], errors[0]
    assert _fingerprint(world / "indexes") == before
