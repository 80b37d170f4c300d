"""Encoders, the Siamese wrapper, contrastive losses, and encoder files.

The encoder is a standalone Functional model taking (n, 28, 28, 1) float32 pixel values in 0..255
(it rescales to 0..1 itself, so the file is the whole transform) and returning
(n, embedding_dim) float32. The Siamese model only exists for training.
"""

from __future__ import annotations

import functools
import os
import weakref
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from siamindex.errors import EncoderError


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines (oneDNN, absl) kept off the terminal.

    Those lines go straight to file descriptor 2 before any logging is set up, so the only way
    to keep them from every command's output is to point descriptor 2 elsewhere meanwhile.
    Import errors still surface as Python exceptions.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all: nothing to protect
        import tensorflow  # noqa: F401

        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from siamindex.defaults import (  # noqa: E402
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    DEFAULT_BATCH_SIZE,
    DEFAULT_EMBEDDING_DIM,
    canonical,
)

Embedder = Callable[[np.ndarray], np.ndarray]
OUTLIER = -1  # the training label of a non-digit (outlier exposure)


@keras.saving.register_keras_serializable(package="siamindex")
class EuclideanDistance(layers.Layer):  # type: ignore[misc]
    """Euclidean distance between two (n, d) tensors, as (n, 1).

    The square root is taken of max(sum of squares, epsilon), so its gradient stays finite
    when the two inputs coincide.
    """

    def call(self, left: Any, right: Any) -> Any:
        squared = ops.sum(ops.square(left - right), axis=1, keepdims=True)
        return ops.sqrt(ops.maximum(squared, keras.backend.epsilon()))


@keras.saving.register_keras_serializable(package="siamindex")
class ContrastiveLoss(keras.losses.Loss):  # type: ignore[misc]
    """Contrastive loss on pair distances: y*d^2 + (1-y)*max(margin-d, 0)^2, label 1 = same."""

    def __init__(self, margin: float = 1.0, name: str = "contrastive_loss", **kwargs: Any):
        super().__init__(name=name, **kwargs)
        self.margin = float(margin)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        y_true = ops.reshape(ops.cast(y_true, y_pred.dtype), (-1,))
        distance = ops.reshape(y_pred, (-1,))
        negative = ops.square(ops.maximum(self.margin - distance, 0.0))
        return y_true * ops.square(distance) + (1.0 - y_true) * negative

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


def in_batch_contrastive(
    labels: Any, embeddings: Any, margin: float, active_negatives: bool = True
) -> Any:
    """Contrastive loss over every pair of distinct rows of a batch (see InBatchContrastiveLoss).

    Args:
        labels: (b,) class labels; ``OUTLIER`` (-1) marks a non-digit, which is pushed beyond
            the margin from every image of a class and paired with no other non-digit.
        embeddings: (b, d) embeddings.
        margin: the contrastive margin.
        active_negatives: average the different-class term over the pairs still inside the
            margin (the training objective) rather than over all of them (a plain measure).
    """
    labels = ops.reshape(labels, (-1,))
    known = ops.cast(labels >= 0, embeddings.dtype)  # OUTLIER rows are no class
    squared_norms = ops.sum(ops.square(embeddings), axis=1)
    squared = (
        squared_norms[:, None]
        + squared_norms[None, :]
        - 2.0 * ops.matmul(embeddings, ops.transpose(embeddings))
    )
    distance = ops.sqrt(ops.maximum(squared, keras.backend.epsilon()))
    batch = ops.shape(labels)[0]
    off_diagonal = 1.0 - ops.eye(batch, dtype=embeddings.dtype)
    same = ops.cast(ops.equal(labels[:, None], labels[None, :]), embeddings.dtype) * off_diagonal
    same = same * known[:, None]
    # Two outliers are neither alike nor pushed apart; an outlier and a digit are different.
    either = 1.0 - (1.0 - known[:, None]) * (1.0 - known[None, :])
    different = (1.0 - same) * off_diagonal * either
    positive = ops.sum(same * ops.square(distance)) / ops.maximum(ops.sum(same), 1.0)
    hinge = different * ops.square(ops.maximum(margin - distance, 0.0))
    counted = ops.cast(hinge > 0, embeddings.dtype) if active_negatives else different
    negative = ops.sum(hinge) / ops.maximum(ops.sum(counted), 1.0)
    return 0.5 * (positive + negative)


@keras.saving.register_keras_serializable(package="siamindex")
class InBatchContrastiveLoss(keras.losses.Loss):  # type: ignore[misc]
    """Contrastive loss over every pair of distinct images in a batch.

    ``y_true`` is the (b,) class labels and ``y_pred`` the (b, d) embeddings. A batch of b images
    gives b(b-1)/2 pairs from b encoder passes, against one pair per two passes with a fixed pair
    list. Each pair's loss is the contrastive one, y*d^2 + (1-y)*max(margin-d, 0)^2; they are
    reduced as the mean over same-class pairs plus the mean over the different-class pairs that
    still violate the margin, halved. Averaging negatives only over the active ones keeps their
    gradient from fading as most of them pass the margin (as in "batch all" triplet training);
    same-class pairs, a tenth of all on MNIST, weigh as much as the active negatives.

    Because that average is over a shrinking set, it is no measure of progress; training
    monitors ``PlainInBatchContrastive`` (all pairs counted) instead.
    """

    def __init__(self, margin: float = 1.0, name: str = "in_batch_contrastive_loss", **kwargs: Any):
        super().__init__(name=name, reduction="sum", **kwargs)
        self.margin = float(margin)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return in_batch_contrastive(y_true, y_pred, self.margin, active_negatives=True)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "margin": self.margin}


def plain_in_batch_contrastive(margin: float) -> keras.metrics.Metric:
    """A metric: in-batch contrastive loss with every pair counted, named "contrastive"."""

    def measure(y_true: Any, y_pred: Any) -> Any:
        return in_batch_contrastive(y_true, y_pred, margin, active_negatives=False)

    return keras.metrics.MeanMetricWrapper(measure, name="contrastive")


def window_max(images: Any, window: int) -> Any:
    """``max_pool(images, window, strides=1, padding="same")`` of (n, h, w, c) images, as the
    maximum of shifted slices, row-wise then column-wise: the same values (max is separable and
    exact), 20x faster on CPU, where TensorFlow's stride-1 pooling with a large window is slow
    (100 ms a batch of 128 at 28x28 with a 7x7 window; this, 5 ms)."""
    before = (window - 1) // 2  # where "same" pooling puts the odd padding: after
    for axis in (1, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (before, window - 1 - before)
        padded = ops.pad(images, pad, constant_values=-np.inf)
        size = images.shape[axis]
        shifted = [
            padded[:, i : i + size] if axis == 1 else padded[:, :, i : i + size]
            for i in range(window)
        ]
        images = functools.reduce(ops.maximum, shifted)
    return images


@keras.saving.register_keras_serializable(package="siamindex")
class InkLevels(layers.Layer):  # type: ignore[misc]
    """The ink alone, at full contrast: (n, 28, 28, 1) pixel values in 0..255 to 0..1.

    The paper is estimated by a grey opening with a ``window`` square (any stroke narrower
    than the window vanishes from it) and subtracted (a white top-hat), so a grey or unevenly
    lit background leaves the strokes (a fine-grained haze, like MNIST-C's fog, does not go);
    then each image is divided by its brightest ink (at least ``floor``, so a faint speck is
    not stretched into a stroke). On MNIST's own digits, black paper with ink up to 255, it
    changes almost nothing.
    """

    def __init__(self, window: int = 7, floor: float = 64.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.window = int(window)
        self.floor = float(floor)

    def call(self, images: Any) -> Any:
        eroded = -window_max(-images, self.window)
        paper = window_max(eroded, self.window)
        ink = ops.relu(images - paper)
        peak = ops.max(ink, axis=(1, 2, 3), keepdims=True)
        return ink / ops.maximum(peak, self.floor)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "window": self.window, "floor": self.floor}


def _article_mlp(embedding_dim: int) -> list[layers.Layer]:
    # Exactly the article's branch (plus the input rescaling the article did outside the model).
    return [
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense_1"),
        layers.Dropout(0.3, name="dropout_1"),
        layers.Dense(128, activation="relu", name="dense_2"),
        layers.Dropout(0.3, name="dropout_2"),
        layers.Dense(embedding_dim, activation="relu", name="embedding"),
    ]


def _cnn(embedding_dim: int) -> list[layers.Layer]:
    # About 15 s an epoch of 54k images on 2 CPU cores (16 filters at full resolution cost half
    # as much as 32 and lose nothing measurable); batch norm lets it train in a few epochs.
    return [
        layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv_1"),
        layers.BatchNormalization(momentum=0.9, name="bn_1"),
        layers.Activation("relu", name="relu_1"),
        layers.MaxPooling2D(2, name="pool_1"),
        layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv_2"),
        layers.BatchNormalization(momentum=0.9, name="bn_2"),
        layers.Activation("relu", name="relu_2"),
        layers.MaxPooling2D(2, name="pool_2"),
        layers.Conv2D(128, 3, use_bias=False, name="conv_3"),
        layers.BatchNormalization(momentum=0.9, name="bn_3"),
        layers.Activation("relu", name="relu_3"),
        layers.GlobalAveragePooling2D(name="pool_3"),
        layers.Dense(128, activation="relu", name="dense_1"),
        layers.Dense(embedding_dim, name="embedding"),
    ]


def build_encoder(
    architecture: str = DEFAULT_ARCHITECTURE,
    embedding_dim: int | None = None,
    headed: bool = False,
) -> keras.Model:
    """Build an untrained encoder of an architecture.

    Args:
        architecture: "article-mlp" (the article's branch) or "cnn".
        embedding_dim: output width; defaults to DEFAULT_EMBEDDING_DIM[architecture].
        headed: to be trained through a projection head (``with_projection_head``). The CNN
            then ends in a linear map of its pooled features: the head takes the place of its
            hidden dense layer, which is where an encoder trained on some classes only loses
            most of what tells the others apart (README, "Classes the encoder never saw").

    Returns:
        A Functional model (n, 28, 28, 1) float32 in 0..255 -> (n, embedding_dim) float32.
    """
    name = canonical("architecture", architecture)
    if name not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {name!r}; expected one of {', '.join(ARCHITECTURES)}"
        )
    embedding_dim = embedding_dim or DEFAULT_EMBEDDING_DIM[name]
    inputs = keras.Input(shape=(28, 28, 1), name="image")
    if name == "article-mlp":  # the article's input: pixels / 255
        x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    else:
        x = InkLevels(name="ink_levels")(inputs)
    for layer in (_article_mlp if name == "article-mlp" else _cnn)(embedding_dim):
        if not (headed and layer.name == "dense_1" and name == "cnn"):
            x = layer(x)
    return keras.Model(inputs, x, name=f"encoder_{name.replace('-', '_')}")


def build_siamese(encoder: keras.Model) -> keras.Model:
    """Apply ``encoder`` to two image inputs and output their Euclidean distance, (n, 1)."""
    shape = tuple(encoder.input_shape[1:])
    left = keras.Input(shape=shape, name="left")
    right = keras.Input(shape=shape, name="right")
    distance = EuclideanDistance(name="distance")(encoder(left), encoder(right))
    return keras.Model([left, right], distance, name="siamese")


def with_projection_head(encoder: keras.Model, width: int) -> keras.Model:
    """The encoder followed by a projection head, Dense(width, relu) then Dense(embedding_dim),
    for training only: the loss is taken on the head's output and the head is dropped
    afterwards (the SimCLR recipe, Chen et al. 2020). The loss shapes the head's space to the
    training classes; the encoder's output before it keeps more of what tells other shapes
    apart. The encoder's layers are shared, so training this trains the encoder."""
    hidden = layers.Dense(width, activation="relu", name="head_1")(encoder.output)
    projected = layers.Dense(embedding_dim_of(encoder), name="head_2")(hidden)
    return keras.Model(encoder.input, projected, name=f"{encoder.name}_with_head")


def as_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (n, 28, 28) -> float32 (n, 28, 28, 1) pixel values in 0..255."""
    return np.asarray(images, dtype=np.float32)[..., None]


COMPILE_FROM = 2048  # images in one call from which XLA's compile (about 1 s) pays for itself
COMPILED_BATCH = 256  # images per XLA call: the fastest size measured here (5,700 images/s)


def embed(
    encoder: keras.Model,
    images: np.ndarray,
    batch_size: int = DEFAULT_BATCH_SIZE,
    compiled: bool | None = None,
) -> np.ndarray:
    """Embed images in fixed-size chunks.

    Args:
        encoder: an encoder model.
        images: (n, 28, 28) uint8 (or float 0..255).
        batch_size: images per encoder call (at most ``COMPILED_BATCH`` when compiled).
        compiled: run the encoder compiled by XLA (tensorflow.org/xla), about 5x faster on CPU
            than TensorFlow's graph, after a compile of about 1 s per batch shape; each chunk
            is padded to a power of 4 (or the full batch), so that few shapes are compiled.
            None: compiled from ``COMPILE_FROM`` images on. A long-running process (``serve``)
            compiles every shape once when it starts (``warm_compiled``).

    Returns:
        (n, embedding_dim) float32, C-contiguous.
    """
    compiled = len(images) >= COMPILE_FROM if compiled is None else compiled
    if compiled:
        batch_size = min(batch_size, COMPILED_BATCH)
    forward = _inference_function(encoder, compiled)
    out = np.empty((len(images), embedding_dim_of(encoder)), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        chunk = as_model_input(images[start : start + batch_size])
        size = len(chunk)
        if compiled and size < batch_size:  # a shape of the few compiled: zero rows after it
            padded = np.zeros((compiled_shape(size, batch_size), *chunk.shape[1:]), np.float32)
            padded[:size] = chunk
            chunk = padded
        out[start : start + size] = forward(chunk).numpy()[:size]
    return out


def compiled_shape(size: int, batch_size: int) -> int:
    """The batch a chunk of ``size`` images is padded to: the next power of 4, at most
    ``batch_size`` (1, 4, 16, 64, 256: five shapes for batches up to 256)."""
    shape = 1
    while shape < size:
        shape *= 4
    return min(shape, batch_size)


def warm_compiled(encoder: keras.Model, batch_size: int) -> None:
    """Compile the encoder for every batch shape ``embed(compiled=True)`` uses up to
    ``batch_size`` images, so that no request waits for a compile."""
    batch_size = min(batch_size, COMPILED_BATCH)
    shapes = {compiled_shape(n, batch_size) for n in (1, 4, 16, 64, 256, batch_size)}
    for shape in sorted(shapes):
        embed(encoder, np.zeros((shape, 28, 28), np.uint8), batch_size, compiled=True)


_INFERENCE: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _inference_function(encoder: keras.Model, compiled: bool = False) -> Any:
    """A traced inference graph of ``encoder`` for any batch size (one trace, then reused),
    or its XLA-compiled form (one compile per batch shape).

    Calling a Keras model eagerly runs op by op; the traced graph embeds about 1.5x faster.
    """
    functions = _INFERENCE.setdefault(encoder, {})
    if compiled not in functions:
        import tensorflow as tf

        def forward(images: Any) -> Any:
            return encoder(images, training=False)

        functions[compiled] = tf.function(
            forward,
            input_signature=[tf.TensorSpec((None, 28, 28, 1), tf.float32)],
            autograph=False,
            jit_compile=compiled,
        )
    return functions[compiled]


def embedding_dim_of(encoder: keras.Model) -> int:
    """The width of the encoder's output."""
    return int(encoder.output_shape[-1])


def save_encoder(encoder: keras.Model, path: str | os.PathLike[str]) -> Path:
    """Write the encoder as a ``.keras`` file (atomically: temp file, then rename)."""
    path = Path(path)
    if path.suffix != ".keras":
        raise EncoderError(
            f"Encoder path '{path}' must end in .keras; for example models/encoder.keras."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.keras")
    try:
        encoder.save(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def load_encoder(path: str | os.PathLike[str]) -> keras.Model:
    """Load an encoder file with Keras ``safe_mode`` (no Lambda or arbitrary code runs).

    Raises:
        EncoderError: the file is missing, not a Keras archive, unsafe, or not an image encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise EncoderError(
            f"Encoder file '{path}' does not exist; train one with `siamindex train --out {path}`."
        )
    if not zipfile.is_zipfile(path):
        raise EncoderError(
            f"'{path}' is not a .keras model file (not a zip archive); "
            "pass a file written by `siamindex train`."
        )
    try:
        encoder = keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises many types for bad archives; all mean "unusable"
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise EncoderError(
            f"Encoder file '{path}' cannot be loaded safely: {message[:300]}"
        ) from None
    shape = tuple(encoder.input_shape[1:]) if hasattr(encoder, "input_shape") else None
    if shape != (28, 28, 1) or len(encoder.output_shape) != 2:
        raise EncoderError(
            f"'{path}' maps {shape} to {getattr(encoder, 'output_shape', '?')}; an encoder must "
            "map (28, 28, 1) images to (embedding_dim,) vectors."
        )
    return encoder
