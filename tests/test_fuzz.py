"""Property tests: any bytes give valid arrays or the project's own error, nothing else."""

from __future__ import annotations

import gzip
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from siamindex.data import load_image_file, parse_idx
from siamindex.errors import SiamIndexError
from siamindex.inputs import load_images, pixels_from_array, read_claims

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def idx_like() -> st.SearchStrategy[bytes]:
    """Bytes that often get past the magic number, so the header and body checks are exercised."""
    header = st.tuples(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E]), st.integers(0, 4))
    dims = st.lists(st.integers(0, 40), min_size=0, max_size=4)
    return st.one_of(
        st.binary(max_size=64),
        st.builds(
            lambda h, d, body: (
                bytes([0, 0, h[0], h[1]]) + b"".join(x.to_bytes(4, "big") for x in d) + body
            ),
            header,
            dims,
            st.binary(max_size=200),
        ),
    )


@FUZZ
@given(idx_like())
def test_idx_parser_returns_arrays_or_data_errors(raw):
    try:
        array = parse_idx(raw)
    except SiamIndexError:
        return
    assert isinstance(array, np.ndarray)
    assert array.nbytes == len(raw) - 4 - 4 * raw[3]


def _png_bytes(data: st.DataObject) -> bytes:
    size = data.draw(st.tuples(st.integers(1, 40), st.integers(1, 40)))
    mode = data.draw(st.sampled_from(["L", "RGB", "RGBA", "LA", "P", "I;16", "1"]))
    buffer = io.BytesIO()
    Image.new(mode, size).save(
        buffer,
        format=data.draw(st.sampled_from(["PNG", "JPEG"])) if mode in ("L", "RGB") else "PNG",
    )
    raw = bytearray(buffer.getvalue())
    for _ in range(data.draw(st.integers(0, 3))):  # damage a few bytes, or none
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    return bytes(raw[:cut])


@FUZZ
@given(st.data())
def test_image_loader_returns_28x28_or_data_errors(data):
    raw = _png_bytes(data) if data.draw(st.booleans()) else data.draw(st.binary(max_size=300))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.png"
        path.write_bytes(raw)
        try:
            image = load_image_file(path, resize=data.draw(st.booleans()))
        except SiamIndexError:
            return
    assert image.shape == (28, 28) and image.dtype == np.uint8


@FUZZ
@given(st.data())
def test_npy_loader_returns_images_or_data_errors(data):
    kind = data.draw(st.sampled_from(["array", "bytes", "damaged"]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        if kind == "bytes":
            path.write_bytes(b"\x93NUMPY" + data.draw(st.binary(max_size=200)))
        else:
            shape = data.draw(
                st.sampled_from([(28, 28), (2, 28, 28), (28,), (3, 28, 27), (0, 28, 28)])
            )
            dtype = data.draw(
                st.sampled_from(["uint8", "int16", "float32", "float64", "bool", "complex64"])
            )
            values = data.draw(st.sampled_from([0.0, 0.5, 1.0, 255.0, -1.0, np.nan, np.inf]))
            with np.errstate(invalid="ignore"):
                np.save(path, np.full(shape, values).astype(dtype))
            if kind == "damaged":
                raw = bytearray(path.read_bytes())
                raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
                path.write_bytes(bytes(raw[: data.draw(st.integers(1, len(raw)))]))
        try:
            images = load_images([str(path)]).pixels
        except SiamIndexError:
            return
    assert images.ndim == 3 and images.shape[1:] == (28, 28) and images.dtype == np.uint8


@FUZZ
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=300))
def test_claims_parser_returns_claims_or_data_errors(text):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.csv"
        path.write_text(text, encoding="utf-8")
        try:
            claims = read_claims(path)
        except SiamIndexError:
            return
    assert len(claims.classes) == len(claims.images) == len(claims.lines)


@FUZZ
@given(
    st.lists(
        st.sampled_from(
            [
                "image,class,label",
                "mnist:test:1,3,3",
                "mnist:test:2,7,",
                "",
                ",,",
                "mnist:test:99999,1",
                "x.png,1",
                "\ufeffimage,class",
                '"mnist:test:3",4',
                "mnist:test:4,5,6,7",
            ]
        ),
        max_size=8,
    )
)
@pytest.mark.filterwarnings("ignore::siamindex.errors.OldSpelling")
def test_claims_parser_on_csv_shaped_lines(lines):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "c.csv"
        path.write_text("\n".join(lines), encoding="utf-8")
        try:
            claims = read_claims(path)
        except SiamIndexError:
            return
    assert all(group for group in claims.classes)


@FUZZ
@given(st.binary(max_size=200))
def test_gzipped_garbage_is_a_data_error(raw):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x-idx3-ubyte.gz"
        path.write_bytes(gzip.compress(raw))
        try:
            images = load_images([str(path)]).pixels
        except SiamIndexError:
            return
    # Only a valid IDX image file loads, and then as exactly what it holds.
    np.testing.assert_array_equal(images, parse_idx(raw).reshape(images.shape))


def test_gzipped_idx_loads_as_what_it_holds(tmp_path, mnist_test):
    from conftest import write_idx

    path = write_idx(tmp_path / "x-idx3-ubyte.gz", mnist_test.images[:3])
    np.testing.assert_array_equal(load_images([str(path)]).pixels, mnist_test.images[:3])


def test_pixels_from_array_rejects_complex():
    with pytest.raises(SiamIndexError, match="dtype complex64"):
        pixels_from_array(np.zeros((28, 28), np.complex64), "x")
