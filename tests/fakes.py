"""A stand-in for a trained encoder, so that library tests run without building a Keras model."""

from __future__ import annotations

from pathlib import Path

import numpy as np


class FakeEncoder:
    """A fixed random projection of the pixels: deterministic, no TensorFlow.

    Random projections keep distances roughly (Johnson-Lindenstrauss), so neighbours, thresholds
    and calibration behave like raw pixels' do: good enough for the index to be meaningful.

    Attributes:
        calls: how many images it has embedded, in total.
    """

    def __init__(self, embedding_dim: int = 8, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.matrix = (rng.normal(size=(28 * 28, embedding_dim)) / 28).astype(np.float32)
        self.embedding_dim = embedding_dim
        self.calls = 0

    def __call__(self, images: np.ndarray) -> np.ndarray:
        self.calls += len(images)
        pixels = np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
        return pixels @ self.matrix


def fake_encoder_file(folder: Path, name: str = "fake.keras") -> Path:
    """A file to stand in the bundle for the fake encoder (the bundle checksums it, nothing
    loads it while a fake embedder is given)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"fake encoder: a random projection, see tests/fakes.py\n")
    return path
