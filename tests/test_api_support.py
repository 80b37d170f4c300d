"""The service's plumbing: bulk image decoding, the body limit, metrics."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from siamindex.api_support import BodyLimit, Metrics, decode_all
from siamindex.errors import DataError
from siamindex.service import Limits


def test_refs_are_gathered_in_order_beside_other_kinds(mnist_test, mnist_train):
    specs = [
        {"ref": "mnist:test:5"},
        {"pixels": mnist_test.images[7].tolist()},
        {"ref": "mnist:train:3"},
        {"ref": "mnist:test:2"},
    ]
    got = decode_all(specs, "none", Limits(), "images")
    want = [mnist_test.images[5], mnist_test.images[7], mnist_train.images[3], mnist_test.images[2]]
    np.testing.assert_array_equal(got, np.stack(want))
    with pytest.raises(DataError, match=r"claims\[1\]\.image: ref mnist:test:10000 is outside"):
        decode_all(
            [{"ref": "mnist:test:1"}, {"ref": "mnist:test:10000"}], "none", Limits(), "claims"
        )


def _send_chunks(limit: int, chunks: list[bytes], headers: list[tuple[bytes, bytes]]):
    seen: list[bytes] = []
    sent: list[dict] = []

    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    messages = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]

    async def receive():
        return messages.pop(0)

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "headers": headers}
    asyncio.run(BodyLimit(app, limit)(scope, receive, send))
    return seen, sent


def test_the_body_limit_holds_with_and_without_a_declared_length():
    _, sent = _send_chunks(100, [b"x" * 50], [(b"content-length", b"500")])
    assert sent[0]["status"] == 413  # declared too large: refused before reading
    seen, sent = _send_chunks(100, [b"x" * 60, b"x" * 60], [])  # chunked, no length
    assert sent[0]["status"] == 413 and len(seen) == 1
    assert "over 100 bytes" in json.loads(sent[1]["body"])["error"]
    _, sent = _send_chunks(100, [b"x" * 40, b"x" * 40], [])
    assert sent[0]["status"] == 200


def test_metrics_render_batch_sizes():
    metrics = Metrics()
    for size in (1, 3, 300):
        metrics.batch(size)
    text = metrics.render({}).decode()
    assert "siamindex_batch_images_count 3.0" in text and "siamindex_batch_images_sum 304.0" in text


def test_only_few_small_images_are_decoded_on_the_event_loop():
    from siamindex.api_support import INLINE_BYTES, INLINE_IMAGES, small

    digit = {"png": "x" * 400, "npy": None, "pixels": None, "ref": None}
    assert small([digit] * INLINE_IMAGES)
    assert not small([digit] * (INLINE_IMAGES + 1))
    assert not small([{**digit, "png": "x" * (INLINE_BYTES + 1)}])
    assert not small([{**digit, "png": None, "ref": "mnist:test:0"}])  # may read the dataset
    assert small([{**digit, "png": None, "pixels": [[0] * 28] * 28}])
