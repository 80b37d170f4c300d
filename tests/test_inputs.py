"""Reading IMAGE arguments (every form) and claims CSVs, and their one-line errors."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
from conftest import write_idx
from PIL import Image

from siamindex.errors import DataError, OldSpelling
from siamindex.inputs import load_images, read_claims

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
        "\ufeffimage,class,true_class\nt.npy:0,7,7\n\nt.npy:1,3,2\nmnist:test:2,1,\n",
        encoding="utf-8",
    )
    claims = read_claims(tmp_path / "c.csv")
    assert claims.classes == ["7", "3", "1"] and claims.true_classes == ["7", "2", None]
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


def test_the_old_label_column_still_reads_with_a_warning(tmp_path):
    (tmp_path / "c.csv").write_text("image,class,label\nmnist:test:0,7,7\n")
    with pytest.warns(OldSpelling, match="column 'label' .* is now called 'true_class'"):
        claims = read_claims(tmp_path / "c.csv")
    assert claims.true_classes == ["7"]
