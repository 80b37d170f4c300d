"""The micro-batcher: concurrent requests share encoder calls, each gets its own rows."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from siamindex.batcher import MicroBatcher


class CountingEncoder:
    """Sums each image's pixels per row: easy to check which rows came back where."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.sizes: list[int] = []
        self.fail_on = fail_on

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.sizes.append(len(images))
        if self.fail_on is not None and len(self.sizes) == self.fail_on:
            raise RuntimeError("encoder broke")
        return images.reshape(len(images), 28, 28).sum(axis=2).astype(np.float32)


def _images(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def test_concurrent_requests_share_calls_and_get_their_own_rows():
    encoder = CountingEncoder()
    batcher = MicroBatcher(encoder, max_batch=64, max_wait=0.05)
    requests = [_images(seed, 1 + seed % 3) for seed in range(30)]

    async def main():
        answers = await asyncio.gather(*(batcher.submit(images) for images in requests))
        await batcher.close()
        return answers

    answers = asyncio.run(main())
    for images, vectors in zip(requests, answers, strict=True):
        np.testing.assert_array_equal(vectors, images.sum(axis=2))
    assert batcher.stats.images == sum(len(r) for r in requests) == sum(encoder.sizes)
    assert batcher.stats.calls < len(requests) / 3  # batched, not one call per request
    assert max(encoder.sizes) <= 64


def test_a_request_larger_than_the_batch_goes_alone_and_whole():
    encoder = CountingEncoder()
    batcher = MicroBatcher(encoder, max_batch=8, max_wait=0.01)
    big, small = _images(1, 20), _images(2, 3)

    async def main():
        return await asyncio.gather(batcher.submit(big), batcher.submit(small))

    got_big, got_small = asyncio.run(main())
    np.testing.assert_array_equal(got_big, big.sum(axis=2))
    np.testing.assert_array_equal(got_small, small.sum(axis=2))
    assert sorted(encoder.sizes) == [3, 20]


def test_an_encoder_error_reaches_its_requests_and_the_worker_goes_on():
    encoder = CountingEncoder(fail_on=1)
    batcher = MicroBatcher(encoder, max_batch=64, max_wait=0.05)

    async def main():
        first = await asyncio.gather(
            batcher.submit(_images(1, 2)), batcher.submit(_images(2, 2)), return_exceptions=True
        )
        second = await batcher.submit(_images(3, 1))
        return first, second

    first, second = asyncio.run(main())
    assert all(isinstance(e, RuntimeError) and "encoder broke" in str(e) for e in first)
    np.testing.assert_array_equal(second, _images(3, 1).sum(axis=2))


def test_sizes_are_reported_and_bounds_checked():
    seen: list[int] = []
    batcher = MicroBatcher(CountingEncoder(), max_batch=4, max_wait=0.0, on_batch=seen.append)
    asyncio.run(batcher.submit(_images(0, 3)))
    assert seen == [3]
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        MicroBatcher(CountingEncoder(), max_batch=0)
    with pytest.raises(ValueError, match="max_wait must be 0 or more"):
        MicroBatcher(CountingEncoder(), max_wait=-1)
