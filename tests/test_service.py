"""What serve keeps warm: request images, and swapping in a new bundle without dropping any."""

from __future__ import annotations

import asyncio
import base64
import io
import threading

import numpy as np
import pytest
from PIL import Image

from siamindex.errors import DataError
from siamindex.index import Index
from siamindex.service import ImageTooLarge, IndexHolder, Limits, decode_request_image


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_every_image_kind_gives_the_same_pixels(mnist_test):
    digit = mnist_test.images[0]
    limits = Limits()
    kinds = {
        "png": {"png": _b64(_png(digit))},
        "npy": {"npy": _b64(_npy(digit))},
        "pixels": {"pixels": digit.tolist()},
        "ref": {"ref": "mnist:test:0"},
    }
    for kind, spec in kinds.items():
        np.testing.assert_array_equal(decode_request_image(spec, kind, "auto", limits), digit)
    # A large dark-on-light drawing is laid out as MNIST by "auto", as the CLI does.
    page = 255 - np.kron(digit, np.ones((8, 8), np.uint8))
    laid_out = decode_request_image({"png": _b64(_png(page))}, "big", "auto", limits)
    assert laid_out.shape == (28, 28) and laid_out[0, 0] == 0 and laid_out.max() > 200


@pytest.mark.parametrize(
    "spec, message",
    [
        ({}, "give exactly one of png, npy, pixels, ref (got none)"),
        ({"png": "x", "ref": "mnist:test:0"}, "(got png, ref)"),
        ({"png": "not base64!"}, "png is not valid base64"),
        ({"png": _b64(b"\x89PNG\r\n\x1a\n trunc")}, "not a readable PNG/JPEG image"),
        ({"npy": _b64(b"\x93NUMPY garbage")}, "npy is not a .npy array"),
        ({"npy": _b64(_npy(np.zeros((2, 28, 28), np.uint8)))}, "npy holds 2 images"),
        ({"npy": _b64(_npy(np.full((28, 28), np.nan)))}, "NaN or infinite"),
        ({"pixels": [[0] * 28] * 27}, "pixels must be 28 rows of 28 numbers"),
        ({"pixels": [[300] * 28] * 28}, "pixels must be whole numbers 0-255"),
        ({"pixels": [[0.5] * 28] * 28}, "pixels must be whole numbers 0-255"),
        ({"ref": "/etc/passwd"}, "is not a dataset item"),
        ({"ref": "mnist:test:10000"}, "outside mnist:test"),
    ],
)
def test_bad_images_are_one_line_data_errors(spec, message):
    with pytest.raises(DataError, match=None) as caught:
        decode_request_image(spec, "images[0]", "auto", Limits())
    assert message in str(caught.value) and str(caught.value).startswith("images[0]")
    assert "\n" not in str(caught.value)


def test_an_image_over_the_side_limit_is_refused_before_decoding():
    huge = _png(np.zeros((300, 40), np.uint8))
    with pytest.raises(ImageTooLarge, match="300 px a side|is 40x300; at most 100 px"):
        decode_request_image({"png": _b64(huge)}, "images[0]", "auto", Limits(max_image_side=100))


def test_a_new_bundle_is_swapped_in_and_old_requests_finish_on_theirs(tiny_index, mnist_test):
    holder = IndexHolder(str(tiny_index), max_batch=32, max_wait=0.001)

    async def main():
        first = await holder.load()
        queries = await first.batcher.submit(mnist_test.images[:5])
        Index.open(tiny_index).add(mnist_test.images[400:401], "4")  # another process writes
        Index.open(tiny_index).remove([1])
        assert await holder.refresh() and not await holder.refresh()  # once per new bundle
        second = holder.current
        # The old generation still answers from what it loaded (its folder may be pruned).
        old = first.index.query_vectors(queries, k=3)
        new = second.index.query_vectors(await second.batcher.submit(mnist_test.images[:5]), k=3)
        return first, second, old, new

    first, second, old, new = asyncio.run(main())
    assert (first.generation, second.generation) == (1, 2)
    assert len(first.index.store.rows) == 300 and len(second.index.store.rows) == 300
    assert second.batcher is first.batcher  # same encoder file: kept warm
    # The served encoder runs compiled (XLA), every batch shape compiled at load.
    from siamindex import model

    encoder = first.index.embedder.args[0]
    assert first.index.embedder.keywords["compiled"] is True
    assert True in model._INFERENCE[encoder]
    assert 1 in {m.id for r in old for m in r.matches} and 1 not in {
        m.id for r in new for m in r.matches
    }


def test_not_ready_while_a_new_bundle_warms(tiny_index, mnist_test, monkeypatch):
    holder = IndexHolder(str(tiny_index), compiled=False)
    release = threading.Event()
    original = IndexHolder._open_and_warm

    def slow(self):
        release.wait(30)
        return original(self)

    async def main():
        await holder.load()
        monkeypatch.setattr(IndexHolder, "_open_and_warm", slow)
        Index.open(tiny_index).remove([2])
        task = asyncio.create_task(holder.refresh())
        while holder.warming is None:
            await asyncio.sleep(0.005)
        states = [holder.ready, holder.current.generation]
        release.set()
        await task
        return states + [holder.ready, holder.current.generation]

    assert asyncio.run(main()) == [False, 1, True, 2]
