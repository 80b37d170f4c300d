from __future__ import annotations

import json

import numpy as np
import pytest

from siamindex import model
from siamindex.training import TrainConfig, train


@pytest.fixture(scope="module")
def trained_cnn(tmp_path_factory):
    out = tmp_path_factory.mktemp("cnn") / "encoder.keras"
    config = TrainConfig(architecture="cnn", epochs=2, train_size=3000, test_size=500, seed=1)
    return train(config, out, progress=False)


def test_cnn_training_writes_encoder_and_report(trained_cnn):
    assert trained_cnn.path.is_file()
    report = json.loads(trained_cnn.report_path.read_text())
    assert report == trained_cnn.report
    assert report["settings"]["sampler"] == "in-batch"
    # The default recipe: augmented batches with a fifth of generated non-digits.
    assert report["settings"]["augment"] is True and report["settings"]["outlier_share"] == 0.2
    assert report["settings"]["article_reproduction"] is False
    assert (
        report["epochs_run"] == len(report["history"]["loss"]) == len(report["history"]["val_loss"])
    )
    assert report["sizes"] == {"train": 2700, "val": 300, "test": 500}
    assert report["train_seconds"] > 0


def test_cnn_learns_something_in_two_epochs(trained_cnn, mnist_test):
    from siamindex.evaluation import pair_metrics

    def auc(encoder):
        vectors = model.embed(encoder, mnist_test.images[:500])
        return pair_metrics(vectors, mnist_test.labels[:500], np.random.default_rng(0), None)[
            "roc_auc"
        ]

    untrained = auc(model.build_encoder("cnn"))
    assert trained_cnn.report["roc_auc"]["test"] == pytest.approx(
        auc(trained_cnn.encoder), abs=0.03
    )
    assert trained_cnn.report["roc_auc"]["test"] > max(0.8, untrained + 0.1)
    assert trained_cnn.report["history"]["loss"][-1] < trained_cnn.report["history"]["loss"][0]
    # The reported figures are what the saved encoder does on the test part's pairs: the first
    # 500 test images, paired by the generator train() seeds for the test part (seed + 2).
    vectors = model.embed(trained_cnn.encoder, mnist_test.images[:500])
    measured = pair_metrics(vectors, mnist_test.labels[:500], np.random.default_rng(1 + 2), 0.5)
    assert trained_cnn.report["pair_accuracy"]["test"] == pytest.approx(measured["pair_accuracy"])
    assert trained_cnn.report["roc_auc"]["test"] == pytest.approx(measured["roc_auc"])
    assert measured["pair_accuracy"] > 0.7


def test_saved_encoder_is_the_trained_one(trained_cnn, mnist_test):
    again = model.load_encoder(trained_cnn.path)
    np.testing.assert_array_equal(
        model.embed(again, mnist_test.images[:20]),
        model.embed(trained_cnn.encoder, mnist_test.images[:20]),
    )


def test_article_reproduction_uses_article_pairs_rmsprop_and_fixed_epochs(tmp_path):
    config = TrainConfig(
        architecture="article-mlp", epochs=2, train_size=1000, test_size=200, patience=0
    )
    result = train(config, tmp_path / "mlp.keras", progress=False)
    settings = result.report["settings"]
    assert settings["sampler"] == "article" and settings["article_reproduction"] is True
    assert result.report["optimizer"] == "RMSprop"
    # No early stopping in the reproduction, even with patience 0.
    assert result.report["epochs_run"] == 2


def test_article_defaults_resolve_to_twenty_epochs():
    resolved = TrainConfig(architecture="article-mlp").resolved()
    assert (resolved.epochs, resolved.sampler, resolved.embedding_dim) == (20, "article", 128)
    assert TrainConfig(architecture="article-mlp", sampler="balanced").resolved().epochs != 20


def test_balanced_sampler_trains_through_the_siamese_model(tmp_path):
    config = TrainConfig(
        architecture="cnn",
        sampler="balanced",
        epochs=1,
        train_size=500,
        test_size=100,
        embedding_dim=8,
    )
    result = train(config, tmp_path / "b.keras", progress=False)
    assert result.report["epochs_run"] == 1
    assert model.embedding_dim_of(result.encoder) == 8


def test_same_seed_same_pairs_same_start(tmp_path):
    config = TrainConfig(
        architecture="article-mlp", epochs=1, train_size=400, test_size=100, seed=5
    )
    first = train(config, tmp_path / "a.keras", progress=False).report["history"]["loss"]
    second = train(config, tmp_path / "b.keras", progress=False).report["history"]["loss"]
    assert first == pytest.approx(second, rel=1e-3)


def test_robust_recipe_is_the_in_batch_default_and_refused_with_drawn_pairs():
    default = TrainConfig().resolved()
    assert (default.augment, default.outlier_share) == (True, 0.2)
    article = TrainConfig(architecture="article-mlp").resolved()
    assert (article.augment, article.outlier_share) == (False, 0.0)  # the article, as it was
    plain = TrainConfig(augment=False, outlier_share=0).resolved()
    assert (plain.augment, plain.outlier_share) == (False, 0.0)
    with pytest.raises(ValueError, match="in-batch only"):
        TrainConfig(architecture="article-mlp", augment=True).resolved()
    with pytest.raises(ValueError, match="outlier share"):
        TrainConfig(outlier_share=0.7).resolved()


def test_outlier_exposure_pushes_non_digits_away(tmp_path, mnist_test):
    """Two tiny encoders, the same but for outlier exposure: with it, generated non-digits
    (from a seed training never drew) lie farther from the digits, relative to how far
    apart the digits themselves lie."""
    from siamindex.exposure import exposure

    def spread(outlier_share):
        config = TrainConfig(
            epochs=2, train_size=3000, test_size=200, augment=False, outlier_share=outlier_share
        )
        encoder = train(config, tmp_path / f"{outlier_share}.keras", progress=False).encoder
        digits = model.embed(encoder, mnist_test.images[:500])
        others = model.embed(encoder, exposure(300, seed=99))
        to_digit = np.linalg.norm(others[:, None] - digits[None], axis=2).min(1)
        digit_gap = np.linalg.norm(digits[:250, None] - digits[None, 250:], axis=2).min(1)
        return np.median(to_digit) / np.median(digit_gap)

    assert spread(0.25) > 1.15 * spread(0.0)  # 1.26x on this machine


def test_classes_and_labelled_choose_what_training_sees():
    from siamindex.errors import DataError
    from siamindex.training import _load_parts

    config = TrainConfig(classes=("0", "3", "5"), labelled=60, test_size=200)
    train_part, val_part, test = _load_parts(config, np.random.default_rng(0))
    assert len(train_part) + len(val_part) == 60
    seen = np.concatenate([train_part.labels, val_part.labels])
    assert np.bincount(seen, minlength=10).tolist() == [20, 0, 0, 20, 0, 20, 0, 0, 0, 0]
    assert set(test.labels.tolist()) == {0, 3, 5} and len(test) == 200
    with pytest.raises(DataError, match="Unknown class 'x'"):
        _load_parts(TrainConfig(classes=("0", "x")), np.random.default_rng(0))
    with pytest.raises(ValueError, match="labelled images must be at least 10"):
        TrainConfig(labelled=5).resolved()


def test_a_projection_head_trains_the_encoder_and_is_left_out_of_it(tmp_path):
    config = TrainConfig(
        epochs=4, train_size=4000, test_size=300, classes=tuple("012345"), head=32, seed=2
    )
    result = train(config, tmp_path / "headed.keras", progress=False)
    saved = model.load_encoder(result.path)
    names = [layer.name for layer in saved.layers]
    # The head is gone and the CNN's hidden dense layer with it (the head took its place).
    assert not [name for name in names if name.startswith("head_")] and "dense_1" not in names
    assert names[-2:] == ["embedding", "threshold_alignment"]
    assert model.embedding_dim_of(saved) == 64
    assert result.report["settings"]["head"] == 32
    # Trained through the head: its loss halves, and the encoder's own output (the head
    # gone) finds the right class by nearest neighbour more often than it did untrained
    # (300 test 0-5 against 1,000 train 0-5 it never saw; 0.88 against 0.81 here).
    from siamindex.data import load_dataset, only_classes

    losses = result.report["history"]["loss"]
    assert losses[-1] < 0.5 * losses[0]
    stored = only_classes(load_dataset(split="train"), config.classes).subset(slice(4000, 5000))
    test = only_classes(load_dataset(split="test"), config.classes).subset(slice(0, 300))

    def one_nn(encoder):
        a, b = model.embed(encoder, stored.images), model.embed(encoder, test.images)
        nearest = ((b[:, None] - a[None]) ** 2).sum(-1).argmin(1)
        return float(np.mean(stored.labels[nearest] == test.labels))

    assert one_nn(saved) > one_nn(model.build_encoder("cnn", headed=True)) + 0.03


def test_a_projection_head_needs_in_batch_training_and_a_width():
    assert TrainConfig(head=128).resolved().head == 128
    with pytest.raises(ValueError, match="projection head needs --sampler in-batch"):
        TrainConfig(head=-1).resolved()
    with pytest.raises(ValueError, match="projection head needs --sampler in-batch"):
        TrainConfig(architecture="article-mlp", head=16).resolved()


def test_few_labelled_images_train_for_at_least_the_minimum_steps():
    from siamindex.training import LABELLED_MIN_STEPS, epochs_for

    assert epochs_for(60_000, 300) == 8
    assert epochs_for(100, 300) == 300  # one step per epoch
    assert epochs_for(1000, 300) == 38
    assert epochs_for(1000, 300, outlier_share=0.0) == 43  # 128 digits a batch: 7 steps
    # 900 images for training (a tenth held out), 102 digits a batch: 8 steps an epoch.
    assert TrainConfig(labelled=1000).resolved().epochs == LABELLED_MIN_STEPS // 8
    assert TrainConfig(labelled=1000, epochs=3).resolved().epochs == 3  # asked for: kept
    assert TrainConfig().resolved().epochs == 8  # all the images: the default
    drawn = TrainConfig(labelled=1000, sampler="balanced", augment=False, outlier_share=0)
    assert drawn.resolved().epochs == 8  # drawn pairs count their steps otherwise
