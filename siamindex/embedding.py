"""Images to vectors through an ``Embedder``: any callable (n, 28, 28) uint8 ->
(n, embedding_dim) float32.

The library reaches the encoder only through this callable, so that building, querying and
checking can run with a fake (tests) or another engine; ``load_embedder`` makes the real one
from a ``.keras`` file, importing TensorFlow only then.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import numpy as np

from siamindex.defaults import DEFAULT_BATCH_SIZE

Embedder = Callable[[np.ndarray], np.ndarray]
PROGRESS_FROM = 5000  # images; smaller batches embed without a progress bar


def load_embedder(
    path: str | os.PathLike[str], batch_size: int = DEFAULT_BATCH_SIZE, compiled: bool | None = None
) -> Embedder:
    """The embedder of a ``.keras`` encoder file (loaded in Keras safe mode).

    ``compiled`` (``model.embed``): None compiles the encoder with XLA for large batches only;
    True for every batch, each batch shape compiled here, before the first call.

    Raises:
        EncoderError: the file is missing, unsafe or not an image encoder.
    """
    from siamindex import model

    encoder = model.load_encoder(path)
    if compiled:
        model.warm_compiled(encoder, batch_size)
    return functools.partial(model.embed, encoder, batch_size=batch_size, compiled=compiled)


def embed_in_chunks(
    embed: Embedder,
    images: np.ndarray,
    chunk_size: int = 4 * DEFAULT_BATCH_SIZE,
    progress: bool = False,
) -> np.ndarray:
    """Embed (n, 28, 28) uint8 images ``chunk_size`` at a time: (n, embedding_dim) float32.

    ``progress`` draws a bar on stderr for large inputs (5,000 images or more).
    """
    from tqdm.auto import tqdm

    chunks = []
    show = progress and len(images) >= PROGRESS_FROM
    with tqdm(
        total=len(images),
        desc="embedding",
        unit="img",
        file=sys.stderr,
        disable=not show,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(images), chunk_size):
            chunks.append(np.asarray(embed(images[start : start + chunk_size]), np.float32))
            bar.update(len(chunks[-1]))
    return np.concatenate(chunks) if chunks else np.empty((0, 0), np.float32)


def embed_distinct(embed: Embedder, images: np.ndarray, progress: bool = False) -> np.ndarray:
    """``embed_in_chunks`` with identical images embedded once: (n, embedding_dim) float32."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    first: dict[bytes, int] = {}  # a dict of row bytes: 100x faster than np.unique(axis=0)
    keep: list[int] = []
    inverse = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(images):
        position = first.setdefault(image.tobytes(), len(keep))
        if position == len(keep):
            keep.append(i)
        inverse[i] = position
    return embed_in_chunks(embed, images[keep], progress=progress)[inverse]
