"""Micro-batching: concurrent requests' images embedded together by one inference worker.

Each request submits its images and awaits their vectors. One worker takes the first waiting
request, gathers more until ``max_batch`` images are waiting or ``max_wait`` seconds have passed
since that first one, runs the encoder once on all of them (in a thread, so the event loop stays
free), and hands each request its own rows. A request larger than ``max_batch`` is embedded
alone, in chunks of the encoder's own batch size. Nothing here knows HTTP or Keras: the work is a
plain callable of a batch of images whose answer has one row per image, such as the encoder,
(n, 28, 28) uint8 -> (n, d) float32, or embedding and searching together (a list of results).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Embed = Callable[[np.ndarray], Any]  # one row (array row or list item) per image


@dataclass
class BatchStats:
    """What the worker has done: encoder calls and the images in each (for /metrics)."""

    calls: int = 0
    images: int = 0
    sizes: list[int] = field(default_factory=list)  # the last 1,000 batch sizes

    def record(self, size: int) -> None:
        self.calls += 1
        self.images += size
        self.sizes = [*self.sizes[-999:], size]


@dataclass
class _Job:
    images: np.ndarray
    done: asyncio.Future[Any]


class MicroBatcher:
    """Embed concurrent requests' images in shared encoder calls.

    Args:
        embed: the work, e.g. the encoder, (n, 28, 28) uint8 -> (n, d) float32.
        max_batch: at most this many images per encoder call (a larger request goes alone).
        max_wait: seconds the worker waits for more requests after the first one arrives.
        on_batch: called with the size of every encoder call (metrics).
    """

    def __init__(
        self,
        embed: Embed,
        max_batch: int = 256,
        max_wait: float = 0.002,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait < 0:
            raise ValueError(f"max_wait must be 0 or more seconds, got {max_wait}")
        self.embed = embed
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.stats = BatchStats()
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, images: np.ndarray) -> Any:
        """The answer for ``images`` ((n, 28, 28) uint8), computed with other requests' images:
        the rows of the shared answer that are this request's."""
        if self._queue is None or self._worker is None or self._worker.done():
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._run(self._queue))
        job = _Job(images, asyncio.get_running_loop().create_future())
        await self._queue.put(job)
        return await job.done

    async def close(self) -> None:
        """Stop the worker once the requests already queued are answered."""
        if self._worker is not None and self._queue is not None:
            await self._queue.join()
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        self._worker = None

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await queue.get()]
            size = len(jobs[0].images)
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                remaining = deadline - loop.time()
                try:
                    job = (
                        queue.get_nowait()
                        if remaining <= 0
                        else await asyncio.wait_for(queue.get(), remaining)
                    )
                except (asyncio.QueueEmpty, asyncio.TimeoutError):
                    break
                if size + len(job.images) > self.max_batch:
                    await self._answer(jobs)  # the newcomer would overflow: it starts the next
                    for _ in jobs:
                        queue.task_done()
                    jobs, size = [job], len(job.images)
                    deadline = loop.time() + self.max_wait
                    continue
                jobs.append(job)
                size += len(job.images)
            await self._answer(jobs)
            for _ in jobs:
                queue.task_done()

    async def _answer(self, jobs: list[_Job]) -> None:
        images = np.concatenate([job.images for job in jobs])
        try:
            vectors = await asyncio.to_thread(self.embed, images)
        except Exception as exc:  # each waiting request gets the error, the worker goes on
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(exc)
            return
        self.stats.record(len(images))
        if self.on_batch is not None:
            self.on_batch(len(images))
        start = 0
        for job in jobs:
            end = start + len(job.images)
            if not job.done.done():  # its client may have gone away
                job.done.set_result(vectors[start:end])
            start = end
