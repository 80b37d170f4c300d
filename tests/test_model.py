from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from siamindex import model
from siamindex.errors import EncoderError

TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"


def test_seed_mlp_is_the_articles_branch():
    encoder = model.build_encoder("article-mlp")
    kinds = [
        (type(layer).__name__, getattr(layer, "units", None), getattr(layer, "rate", None))
        for layer in encoder.layers[2:]
    ]
    assert kinds == [
        ("Flatten", None, None),
        ("Dense", 128, None),
        ("Dropout", None, 0.3),
        ("Dense", 128, None),
        ("Dropout", None, 0.3),
        ("Dense", 128, None),
    ]
    assert all(
        layer.activation.__name__ == "relu" for layer in encoder.layers if hasattr(layer, "units")
    )
    assert encoder.output_shape == (None, 128)


@pytest.mark.parametrize("name, dim", [("cnn", 64), ("cnn", 16), ("article-mlp", 32)])
def test_encoders_map_images_to_vectors(name, dim, mnist_test):
    encoder = model.build_encoder(name, embedding_dim=dim)
    vectors = model.embed(encoder, mnist_test.images[:10], batch_size=3)
    assert vectors.shape == (10, dim) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[:3], model.embed(encoder, mnist_test.images[:3]), atol=1e-5)


def test_euclidean_distance_layer():
    left = np.array([[0.0, 0.0], [1.0, 1.0]], np.float32)
    right = np.array([[3.0, 4.0], [1.0, 1.0]], np.float32)
    out = np.asarray(model.EuclideanDistance()(left, right))
    np.testing.assert_allclose(out[:, 0], [5.0, np.sqrt(keras.backend.epsilon())], rtol=1e-5)


def test_contrastive_loss_formula():
    loss = model.ContrastiveLoss(margin=1.0)
    distance = np.array([[0.2], [0.3], [1.5]], np.float32)
    same = np.array([1.0, 0.0, 0.0], np.float32)
    expected = np.mean([0.2**2, (1 - 0.3) ** 2, 0.0])
    assert float(loss(same, distance)) == pytest.approx(expected, rel=1e-5)


def test_in_batch_loss_matches_a_loop():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 4)).astype(np.float32) * 0.4
    labels = rng.integers(0, 3, size=12).astype(np.float32)
    positive, negative = [], []
    for i in range(12):
        for j in range(12):
            if i == j:
                continue
            d = np.linalg.norm(vectors[i] - vectors[j])
            if labels[i] == labels[j]:
                positive.append(d**2)
            elif d < 1.0:  # only the negatives still inside the margin count
                negative.append((1.0 - d) ** 2)
    assert 0 < len(negative) < np.sum(labels[:, None] != labels[None, :])
    expected = 0.5 * (np.mean(positive) + np.mean(negative))
    got = float(model.InBatchContrastiveLoss(margin=1.0)(labels, vectors))
    assert got == pytest.approx(expected, rel=1e-4)


def test_in_batch_loss_pushes_outliers_from_every_class_and_pairs_none_of_them():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(14, 4)).astype(np.float32) * 0.4
    labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 0, -1, -1, -1, -1], np.float32)
    positive, negative = [], []
    for i in range(14):
        for j in range(14):
            if i == j or labels[i] == labels[j] == model.OUTLIER:
                continue  # two outliers are no pair
            d = np.linalg.norm(vectors[i] - vectors[j])
            if labels[i] == labels[j]:
                positive.append(d**2)
            elif d < 1.0:
                negative.append((1.0 - d) ** 2)
    expected = 0.5 * (np.mean(positive) + np.mean(negative))
    got = float(model.InBatchContrastiveLoss(margin=1.0)(labels, vectors))
    assert got == pytest.approx(expected, rel=1e-4)
    # Outliers beyond the margin from every digit add nothing, however close to each other.
    far = vectors.copy()
    far[10:] = 50.0 + rng.normal(size=(4, 4)) * 0.01  # outliers together, far from digits
    without = float(model.InBatchContrastiveLoss(1.0)(labels[:10], far[:10]))
    assert float(model.InBatchContrastiveLoss(1.0)(labels, far)) == pytest.approx(without)


def test_siamese_outputs_the_distance_of_the_embeddings(mnist_test):
    encoder = model.build_encoder("cnn", embedding_dim=8)
    siamese = model.build_siamese(encoder)
    left, right = mnist_test.images[:4], mnist_test.images[4:8]
    distance = np.asarray(siamese([model.as_model_input(left), model.as_model_input(right)]))[:, 0]
    want = np.linalg.norm(model.embed(encoder, left) - model.embed(encoder, right), axis=1)
    np.testing.assert_allclose(distance, want, rtol=1e-4)


def test_saved_siamese_reloads_in_safe_mode(tmp_path):
    siamese = model.build_siamese(model.build_encoder("article-mlp", embedding_dim=8))
    siamese.save(tmp_path / "siamese.keras")
    again = keras.saving.load_model(tmp_path / "siamese.keras", safe_mode=True, compile=False)
    assert any(isinstance(layer, model.EuclideanDistance) for layer in again.layers)


def test_saved_encoder_gives_identical_embeddings_in_a_fresh_process(tmp_path, mnist_test):
    encoder = model.build_encoder("cnn", embedding_dim=16)
    path = model.save_encoder(encoder, tmp_path / "encoder.keras")
    np.save(tmp_path / "images.npy", mnist_test.images[:50])
    np.save(tmp_path / "here.npy", model.embed(encoder, mnist_test.images[:50]))
    script = (
        "import numpy as np, sys; from siamindex import model; "
        f"e = model.load_encoder(r'{path}'); "
        f"x = np.load(r'{tmp_path / 'images.npy'}'); "
        f"np.save(r'{tmp_path / 'there.npy'}', model.embed(e, x))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    np.testing.assert_array_equal(np.load(tmp_path / "here.npy"), np.load(tmp_path / "there.npy"))


def test_load_encoder_errors(tmp_path):
    with pytest.raises(EncoderError, match="does not exist"):
        model.load_encoder(tmp_path / "missing.keras")
    (tmp_path / "junk.keras").write_bytes(b"not a zip at all")
    with pytest.raises(EncoderError, match="not a zip archive"):
        model.load_encoder(tmp_path / "junk.keras")


def test_encoder_with_a_lambda_refuses_to_load(tmp_path):
    inputs = keras.Input(shape=(28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Lambda(lambda t: t * 2.0)(x)
    unsafe = keras.Model(inputs, keras.layers.Dense(4)(x))
    unsafe.save(tmp_path / "unsafe.keras")
    with pytest.raises(EncoderError, match="cannot be loaded safely"):
        model.load_encoder(tmp_path / "unsafe.keras")


def test_non_image_model_is_rejected(tmp_path):
    inputs = keras.Input(shape=(10,))
    keras.Model(inputs, keras.layers.Dense(4)(inputs)).save(tmp_path / "other.keras")
    with pytest.raises(EncoderError, match="an encoder must map"):
        model.load_encoder(tmp_path / "other.keras")


def test_ink_levels_keep_mnist_digits_and_drop_the_paper(mnist_test):
    digits = model.as_model_input(mnist_test.images[:50])
    layer = model.InkLevels()
    clean = np.asarray(layer(digits))
    # MNIST's own digits (black paper, ink up to 255) come out as pixels / 255, nearly.
    assert np.abs(clean - digits / 255.0).mean() < 0.01
    # A grey or unevenly lit paper under the same ink gives the same ink.
    ramp = np.linspace(40, 120, 28, dtype=np.float32)[None, None, :, None]
    for paper in (np.float32(100.0), ramp):
        lit = np.maximum(digits, paper)
        assert np.abs(np.asarray(layer(lit)) - clean).mean() < 0.03  # anti-aliasing dims
    # A faint speck is not stretched into a stroke; blank stays blank.
    speck = np.zeros((1, 28, 28, 1), np.float32)
    speck[0, 14, 14] = 20
    assert np.asarray(layer(speck)).max() == pytest.approx(20 / 64)
    assert np.asarray(layer(np.zeros_like(speck))).max() == 0


@pytest.mark.parametrize("window", [1, 2, 6, 7])
def test_window_max_is_stride_one_max_pooling_exactly(window):
    from keras import ops

    images = np.random.default_rng(window).normal(size=(5, 28, 20, 2)).astype(np.float32)
    expected = np.asarray(ops.max_pool(images, window, strides=1, padding="same"))
    assert np.array_equal(np.asarray(model.window_max(images, window)), expected)


def test_cnn_starts_with_ink_levels_and_the_article_with_plain_rescaling():
    assert model.build_encoder("cnn").layers[1].name == "ink_levels"
    assert model.build_encoder("article-mlp").layers[1].name == "rescale"


def test_compiled_embedding_equals_the_graph_whatever_the_padding(mnist_test):
    """XLA-compiled embedding (each chunk padded to one of a few batch shapes) gives the
    graph's vectors, for every row; the shapes are powers of 4 up to the batch."""
    assert [model.compiled_shape(n, 256) for n in (1, 2, 4, 5, 17, 64, 65, 256)] == [
        1, 4, 4, 16, 64, 64, 256, 256
    ]  # fmt: skip
    assert model.compiled_shape(70, 100) == 100
    encoder = model.load_encoder(TINY_ENCODER)
    images = mnist_test.images[:70]
    graph = model.embed(encoder, images, batch_size=32, compiled=False)
    compiled = model.embed(encoder, images, batch_size=32, compiled=True)  # 32, 32, 6 -> 16
    np.testing.assert_allclose(compiled, graph, atol=1e-5)
    np.testing.assert_allclose(
        model.embed(encoder, images[:3], compiled=True), graph[:3], atol=1e-5
    )
    functions = model._INFERENCE[encoder]
    assert set(functions) == {False, True}
    # Large calls compile on their own (None: from COMPILE_FROM images on), small ones do not.
    fresh = model.load_encoder(TINY_ENCODER)
    model.embed(fresh, images[:10])
    assert set(model._INFERENCE[fresh]) == {False}


def test_a_projection_head_shares_the_encoders_layers(mnist_test):
    encoder = model.build_encoder("cnn", embedding_dim=8, headed=True)
    assert "dense_1" not in [layer.name for layer in encoder.layers]
    assert "dense_1" in [layer.name for layer in model.build_encoder("cnn", 8).layers]
    headed = model.with_projection_head(encoder, 16)
    images = model.as_model_input(mnist_test.images[:4])
    assert np.asarray(headed(images)).shape == (4, 8)
    # The head is on top of the encoder's own layers: a change to them shows in both outputs.
    before = np.asarray(headed(images))
    layer = encoder.get_layer("embedding")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 2, bias])
    assert not np.allclose(np.asarray(headed(images)), before)
