"""Embedding through a plain callable: chunks, progress, identical images once."""

from __future__ import annotations

import numpy as np
from fakes import FakeEncoder


def test_chunks_give_the_same_vectors_as_one_call(mnist_test):
    from siamindex.embedding import embed_in_chunks

    encoder = FakeEncoder(embedding_dim=5)
    images = mnist_test.images[:1000]
    chunked = embed_in_chunks(encoder, images, chunk_size=96, progress=True)
    np.testing.assert_allclose(chunked, encoder(images), atol=1e-6)
    assert chunked.dtype == np.float32 and chunked.shape == (1000, 5)


def test_identical_images_are_embedded_once(mnist_test):
    from siamindex.embedding import embed_distinct

    encoder = FakeEncoder(embedding_dim=5)
    images = mnist_test.images[[0, 1, 0, 2, 1, 0]]
    vectors = embed_distinct(encoder, images)
    assert encoder.calls == 3
    np.testing.assert_allclose(vectors, FakeEncoder(embedding_dim=5)(images), atol=1e-6)
