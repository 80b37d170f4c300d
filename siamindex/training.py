"""Train an encoder with contrastive loss and write it with a JSON report beside it."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import model as encoders
from siamindex.data import Dataset, balanced_sample, load_dataset, only_classes, sha256_file
from siamindex.defaults import (
    ARCHITECTURES,
    ARTICLE_THRESHOLD,
    DEFAULT_ARCHITECTURE,
    DEFAULT_EMBEDDING_DIM,
    DEFAULT_SAMPLER,
    SAMPLERS,
    canonical,
)
from siamindex.evaluation import pair_distances, pair_metrics
from siamindex.metrics import max_accuracy_threshold
from siamindex.pairs import ARTICLE_EVAL_SAME_FRACTION, ARTICLE_TRAIN_SAME_FRACTION, make_pairs

logger = logging.getLogger(__name__)

ARTICLE_EPOCHS = 20
DEFAULT_EPOCHS = 8
ARTICLE_LEARNING_RATE = 1e-3  # RMSprop, as in the article
DEFAULT_LEARNING_RATE = 2e-3  # Adam with cosine decay
DEFAULT_OUTLIER_SHARE = 0.2  # of each training batch: non-digits (outlier exposure)
EXPOSURE_IMAGES = 10_000  # distinct training non-digits, augmented afresh every epoch
# With --labelled N and no --epochs: at least this many optimiser steps, chosen at N = 1,000
# on held-out train images (README, "Little labelled data"); early stopping still ends it.
LABELLED_MIN_STEPS = 9_000


def epochs_for(
    count: int,
    min_steps: int,
    val_fraction: float = 0.1,
    batch: int = 128,
    outlier_share: float = DEFAULT_OUTLIER_SHARE,
) -> int:
    """Enough epochs (at least the default 8) for ``min_steps`` in-batch steps on ``count``
    labelled images, of which ``val_fraction`` is held out."""
    digits_per_batch = batch - (max(1, round(batch * outlier_share)) if outlier_share else 0)
    steps = max(1, int(count * (1 - val_fraction)) // digits_per_batch)
    return max(DEFAULT_EPOCHS, -(-min_steps // steps))


@dataclass(frozen=True)
class TrainConfig:
    """Training settings. None means "the default for this architecture/sampler"."""

    architecture: str = DEFAULT_ARCHITECTURE
    sampler: str | None = None
    epochs: int | None = None
    batch_size: int = 128
    margin: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    embedding_dim: int | None = None
    learning_rate: float | None = None
    patience: int = 3
    data_dir: str | None = None
    train_size: int | None = None
    test_size: int | None = None
    align_threshold: bool = True
    augment: bool | None = None
    outlier_share: float | None = None
    classes: tuple[str, ...] | None = None
    labelled: int | None = None
    head: int = 0

    def resolved(self) -> TrainConfig:
        """The same settings with every default filled in, and validated."""
        architecture = canonical("architecture", self.architecture)
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {architecture!r}; expected one of {ARCHITECTURES}"
            )
        sampler = canonical("sampler", self.sampler or DEFAULT_SAMPLER[architecture])
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; expected one of {SAMPLERS}")
        article = architecture == "article-mlp" and sampler == "article"
        epochs = self.epochs or (ARTICLE_EPOCHS if article else DEFAULT_EPOCHS)
        if epochs < 1 or self.batch_size < 2 or self.margin <= 0 or not 0 < self.val_fraction < 1:
            raise ValueError("epochs >= 1, batch_size >= 2, margin > 0 and 0 < val_fraction < 1")
        robust = sampler == "in-batch"  # the default encoder's recipe (README, "Robustness")
        augment = robust if self.augment is None else self.augment
        outlier_share = (
            (DEFAULT_OUTLIER_SHARE if robust else 0.0)
            if self.outlier_share is None
            else self.outlier_share
        )
        if self.labelled is not None and self.labelled < 10:
            raise ValueError(f"labelled images must be at least 10, got {self.labelled}")
        if self.head < 0 or (self.head and sampler != "in-batch"):
            raise ValueError(
                "a projection head needs --sampler in-batch and a width of 1 or more, "
                f"got {self.head}"
            )
        if not 0 <= outlier_share < 0.5:
            raise ValueError(f"outlier share must be in [0, 0.5), got {outlier_share}")
        if self.labelled and not self.epochs and sampler == "in-batch":
            epochs = epochs_for(
                self.labelled, LABELLED_MIN_STEPS, self.val_fraction, self.batch_size, outlier_share
            )
        if (augment or outlier_share) and sampler != "in-batch":
            raise ValueError(
                "augmentation and outlier exposure train with --sampler in-batch only; "
                "add --no-augment --outlier-share 0 to train with drawn pairs"
            )
        return TrainConfig(
            **{
                **asdict(self),
                "architecture": architecture,
                "sampler": sampler,
                "epochs": epochs,
                "learning_rate": self.learning_rate
                or (ARTICLE_LEARNING_RATE if article else DEFAULT_LEARNING_RATE),
                "embedding_dim": self.embedding_dim or DEFAULT_EMBEDDING_DIM[architecture],
                "augment": augment,
                "outlier_share": outlier_share,
            }
        )

    @property
    def is_article_reproduction(self) -> bool:
        """article-mlp with the article's sampler: exactly 20 epochs of RMSprop, no early
        stopping. (Call on a resolved config: old names are mapped there.)"""
        return self.architecture == "article-mlp" and (self.sampler or "article") == "article"


@dataclass
class TrainResult:
    """What ``train`` produced: the encoder, where it was written, and the report."""

    encoder: Any
    path: Path
    report_path: Path
    report: dict[str, Any] = field(default_factory=dict)


class _Progress:
    """A Keras callback drawing a tqdm bar per epoch on stderr, with the losses."""

    def __new__(cls, epochs: int, steps: int):  # type: ignore[no-untyped-def]
        import keras
        from tqdm.auto import tqdm

        class Progress(keras.callbacks.Callback):  # type: ignore[misc]
            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.bar = tqdm(
                    total=steps,
                    desc=f"epoch {epoch + 1}/{epochs}",
                    file=sys.stderr,
                    unit="batch",
                    leave=True,
                    dynamic_ncols=True,
                )

            def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
                self.bar.update(1)
                if logs and batch % 20 == 0:
                    self.bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                shown = ("loss", "val_loss", "val_contrastive")  # the last is what stops early
                self.bar.set_postfix(
                    {key: f"{value:.4f}" for key, value in (logs or {}).items() if key in shown}
                )
                self.bar.close()

        return Progress()


def split_validation(
    dataset: Dataset, fraction: float, rng: np.random.Generator
) -> tuple[Dataset, Dataset]:
    """Split off a random ``fraction`` of ``dataset`` for validation: (train, validation)."""
    order = rng.permutation(len(dataset))
    count = max(1, int(round(fraction * len(dataset))))
    return dataset.subset(np.sort(order[count:])), dataset.subset(np.sort(order[:count]))


def _monitor(config: TrainConfig) -> str:
    """What early stopping watches: plain in-batch contrastive loss, or the pair loss."""
    return "val_contrastive" if config.sampler == "in-batch" else "val_loss"


def _fit(
    config: TrainConfig,
    encoder: Any,
    train: Dataset,
    val: Dataset,
    rng: np.random.Generator,
    progress: bool,
) -> Any:
    net, loss, metrics, (x, y), validation = _training_task(config, encoder, train, val, rng)
    if config.augment or config.outlier_share:
        data, steps_per_epoch = _robust_batches(config, x, y)
        fit_data: dict[str, Any] = {"x": data, "steps_per_epoch": steps_per_epoch, "shuffle": False}
    else:
        steps_per_epoch = int(np.ceil(len(y) / config.batch_size))
        fit_data = {"x": x, "y": y, "batch_size": config.batch_size, "shuffle": True}
    net.compile(optimizer=_optimizer(config, steps_per_epoch), loss=loss, metrics=metrics)
    return net.fit(
        **fit_data,
        epochs=config.epochs,
        validation_data=validation,
        callbacks=_callbacks(config, steps_per_epoch, progress),
        verbose=0,
    )


def _robust_batches(config: TrainConfig, x: np.ndarray, y: np.ndarray) -> tuple[Any, int]:
    """Endless training batches of digits and non-digits (labelled ``OUTLIER``), augmented
    afresh each time, as a ``tf.data`` pipeline; and the steps of one epoch (every digit once).
    """
    import tensorflow as tf

    from siamindex.augment import augmenter
    from siamindex.exposure import exposure

    share = float(config.outlier_share or 0.0)
    per_batch = max(1, int(round(config.batch_size * share))) if share else 0
    digits_per_batch = config.batch_size - per_batch
    augment = augmenter(config.seed) if config.augment else None

    def batches_of(images: np.ndarray, labels: np.ndarray, size: int) -> Any:
        data = (
            tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
            .shuffle(len(labels), seed=config.seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(size, drop_remainder=True)
        )
        if augment is None:
            return data
        return data.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )

    batches = batches_of(x, y, digits_per_batch)
    if per_batch:
        # As many as the share asks of one epoch, at most EXPOSURE_IMAGES (augmentation
        # varies them from epoch to epoch).
        count = min(EXPOSURE_IMAGES, max(4 * per_batch, int(len(y) * share / (1 - share))))
        others = encoders.as_model_input(exposure(count, seed=config.seed + 1))
        outliers = batches_of(others, np.full(count, encoders.OUTLIER), per_batch)
        batches = tf.data.Dataset.zip(batches, outliers).map(
            lambda a, b: (tf.concat([a[0], b[0]], 0), tf.concat([a[1], b[1]], 0))
        )
    return batches.prefetch(tf.data.AUTOTUNE), max(1, len(y) // digits_per_batch)


def _training_task(
    config: TrainConfig, encoder: Any, train: Dataset, val: Dataset, rng: np.random.Generator
) -> tuple[Any, Any, list[Any], tuple[Any, Any], tuple[Any, Any]]:
    """(model to fit, loss, metrics, (x, y), validation data) for the config's sampler: the
    encoder itself on labels (in-batch pairs), or the Siamese model on drawn pairs."""
    if config.sampler == "in-batch":
        return (
            encoders.with_projection_head(encoder, config.head) if config.head else encoder,
            encoders.InBatchContrastiveLoss(config.margin),
            [encoders.plain_in_batch_contrastive(config.margin)],
            (encoders.as_model_input(train.images), train.labels),
            (encoders.as_model_input(val.images), val.labels),
        )
    sampler = str(config.sampler)
    pairs = make_pairs(train.labels, sampler, rng, same_fraction=ARTICLE_TRAIN_SAME_FRACTION)
    val_pairs = make_pairs(val.labels, sampler, rng, same_fraction=ARTICLE_EVAL_SAME_FRACTION)
    return (
        encoders.build_siamese(encoder),
        encoders.ContrastiveLoss(config.margin),
        [],
        (
            [encoders.as_model_input(train.images[p]) for p in (pairs.left, pairs.right)],
            pairs.is_same,
        ),
        (
            [encoders.as_model_input(val.images[p]) for p in (val_pairs.left, val_pairs.right)],
            val_pairs.is_same,
        ),
    )


def _optimizer(config: TrainConfig, steps_per_epoch: int) -> Any:
    """RMSprop at a fixed rate for the article; Adam with cosine decay otherwise."""
    import keras

    if config.is_article_reproduction:
        return keras.optimizers.RMSprop(learning_rate=config.learning_rate)
    steps = int(config.epochs or 0) * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.05)
    return keras.optimizers.Adam(learning_rate=schedule)


def _callbacks(config: TrainConfig, steps_per_epoch: int, progress: bool) -> list[Any]:
    """Early stopping (never for the article's fixed 20 epochs) and the progress bar."""
    import keras

    callbacks: list[Any] = []
    if not config.is_article_reproduction:
        callbacks.append(
            keras.callbacks.EarlyStopping(
                monitor=_monitor(config),
                mode="min",
                patience=config.patience,
                restore_best_weights=True,
                # The first half of a cosine schedule runs at a high learning rate, where the
                # validation loss wanders; judge progress only in the second half.
                start_from_epoch=0 if config.sampler != "in-batch" else (config.epochs or 0) // 2,
            )
        )
    if progress:
        callbacks.append(_Progress(int(config.epochs or 0), steps_per_epoch))
    return callbacks


def align_to_threshold(encoder: Any, val: Dataset, seed: int) -> tuple[Any, float]:
    """Scale the encoder's output so that the article's fixed 0.5 is its best pair threshold.

    The threshold that maximises pair accuracy on article-protocol pairs of the validation part
    (never the test split) is mapped to 0.5 by a final Rescaling layer. Distances keep their
    order, so neighbours and every calibrated index threshold are unaffected; only the
    article's fixed-threshold pair accuracy depends on it.

    Returns:
        (the scaled encoder, the scale).
    """
    import keras

    vectors = encoders.embed(encoder, val.images)
    pairs = make_pairs(
        val.labels, "article", np.random.default_rng(seed), same_fraction=ARTICLE_EVAL_SAME_FRACTION
    )
    best, _ = max_accuracy_threshold(
        pair_distances(vectors, pairs.left, pairs.right), pairs.is_same
    )
    scale = float(ARTICLE_THRESHOLD / best)
    outputs = keras.layers.Rescaling(scale, name="threshold_alignment")(encoder.output)
    return keras.Model(encoder.input, outputs, name=encoder.name), scale


def train(config: TrainConfig, out: str | Path, progress: bool = True) -> TrainResult:
    """Train an encoder, write it to ``out`` (.keras) and a JSON report beside it (.json).

    The report holds the settings, epochs run, seconds, loss history, and pair accuracy at
    distance 0.5 on article-protocol pairs of the train part, the validation part and the test
    split, with test ROC AUC.

    Raises:
        ValueError: a setting is out of range.
        DataError: the dataset cannot be read.
    """
    import keras

    config = config.resolved()
    out = Path(out)
    if out.suffix != ".keras":
        raise ValueError(f"output path '{out}' must end in .keras")
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    train_part, val_part, test = _load_parts(config, rng)

    encoder = encoders.build_encoder(
        config.architecture, config.embedding_dim, headed=bool(config.head)
    )
    started = time.perf_counter()
    history = _fit(config, encoder, train_part, val_part, rng, progress)
    seconds = time.perf_counter() - started
    scale = 1.0
    if config.align_threshold and not config.is_article_reproduction:
        encoder, scale = align_to_threshold(encoder, val_part, config.seed)
    encoders.save_encoder(encoder, out)

    measured = _pair_measures(encoder, train_part, val_part, test, config.seed)
    losses = {key: [float(v) for v in values] for key, values in history.history.items()}
    report = {
        "encoder_file": str(out),
        "encoder_sha256": sha256_file(out),
        "settings": {**asdict(config), "article_reproduction": config.is_article_reproduction},
        "optimizer": type(history.model.optimizer).__name__,
        "output_scale": scale,
        "epochs_run": len(losses.get("loss", [])),
        "early_stopping_monitor": None if config.is_article_reproduction else _monitor(config),
        "train_seconds": round(seconds, 2),
        "history": losses,
        "sizes": {"train": len(train_part), "val": len(val_part), "test": len(test)},
        "pair_threshold": ARTICLE_THRESHOLD,
        "pair_accuracy": {name: found["pair_accuracy"] for name, found in measured.items()},
        "roc_auc": {name: found["roc_auc"] for name, found in measured.items()},
        "versions": {"keras": keras.__version__},
    }
    report_path = out.with_suffix(".json")
    temporary = report_path.with_name(f".{report_path.name}.tmp")
    temporary.write_text(json.dumps(report, indent=2) + "\n")
    temporary.replace(report_path)
    logger.info("wrote %s and %s", out, report_path)
    return TrainResult(encoder=encoder, path=out, report_path=report_path, report=report)


def _load_parts(config: TrainConfig, rng: np.random.Generator) -> tuple[Dataset, Dataset, Dataset]:
    """(train part, validation part, test split), cut to the config's sizes."""
    full = load_dataset(config.data_dir, "train")
    test = load_dataset(config.data_dir, "test")
    if config.classes is not None:
        full, test = only_classes(full, config.classes), only_classes(test, config.classes)
    if config.train_size:
        full = full.subset(slice(0, config.train_size))
    if config.labelled:
        full = balanced_sample(full, config.labelled, rng)
    if config.test_size:
        test = test.subset(slice(0, config.test_size))
    train_part, val_part = split_validation(full, config.val_fraction, rng)
    return train_part, val_part, test


def _pair_measures(
    encoder: Any, train: Dataset, val: Dataset, test: Dataset, seed: int
) -> dict[str, dict[str, float | None]]:
    """Pair accuracy at 0.5 and ROC AUC on article-protocol pairs of each part."""
    parts = [
        ("train", train, ARTICLE_TRAIN_SAME_FRACTION),
        ("val", val, ARTICLE_EVAL_SAME_FRACTION),
        ("test", test, ARTICLE_EVAL_SAME_FRACTION),
    ]
    return {
        name: pair_metrics(
            encoders.embed(encoder, part.images),
            part.labels,
            np.random.default_rng(seed + offset),
            ARTICLE_THRESHOLD,
            same_fraction=fraction,
        )
        for offset, (name, part, fraction) in enumerate(parts)
    }
