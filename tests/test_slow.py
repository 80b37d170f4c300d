"""Full-size training runs with the issue's accuracy goals (deselected by default: -m slow)."""

from __future__ import annotations

import functools
import statistics

import numpy as np
import pytest

from siamindex import model
from siamindex.evaluation import evaluate
from siamindex.training import TrainConfig, train

pytestmark = pytest.mark.slow
# The robustness goals of issue 10 that the default encoder does not reach yet (README,
# "Robustness"); strict, so that reaching one fails the run until its marker is removed.
NOT_REACHED = pytest.mark.xfail(strict=True, reason="goal not reached yet: see the README")


def test_article_reproduction_lands_in_the_articles_range(tmp_path):
    # One seed varies by about +-0.005 (0.957-0.965 over seeds 0-2), so judge the median of three.
    accuracies = []
    for seed in range(3):
        config = TrainConfig(architecture="article-mlp", seed=seed)
        result = train(config, tmp_path / f"article-{seed}.keras", progress=False)
        assert result.report["epochs_run"] == 20
        accuracies.append(result.report["pair_accuracy"]["test"])
    assert 0.961 <= statistics.median(accuracies) <= 0.975


def test_default_encoder_beats_the_article_and_raw_pixels(tmp_path):
    result = train(TrainConfig(), tmp_path / "default.keras", progress=False)
    measured = evaluate(functools.partial(model.embed, result.encoder))
    assert measured["encoder"]["pair_accuracy"] >= 0.99
    # The robust default gives up about 0.005 of clean 1-NN (0.9878; README, "Training");
    # the issue-10 goal of 0.995 is test_robust_goal_clean_digits below.
    assert measured["encoder"]["one_nn_accuracy"] >= 0.985
    assert measured["encoder"]["one_nn_accuracy"] > measured["raw_pixels"]["one_nn_accuracy"]


@pytest.fixture(scope="module")
def robust_measures(tmp_path_factory):
    """The robustness benchmark's measures (tools/bench_robust.py) of a freshly trained default
    encoder, on 2,000 test images per corruption and 500 images per non-digit set."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
    import bench_robust

    from siamindex.corruptions import CORRUPTIONS, corrupt
    from siamindex.data import load_dataset
    from siamindex.evaluation import raw_pixels
    from siamindex.outliers import OUTLIER_SETS, outliers

    folder = tmp_path_factory.mktemp("robust")
    encoder = train(TrainConfig(), folder / "default.keras", progress=False).path
    stand_in = folder / "raw.keras"
    stand_in.write_text("raw pixels: no encoder\n")
    indexes = {
        "encoder": bench_robust.build(folder, "encoder", encoder),
        "raw pixels": bench_robust.build(folder, "pixels", stand_in, embed=raw_pixels),
    }
    test = load_dataset(split="test").subset(slice(0, 2000))
    sets = {"clean": test.images} | {name: corrupt(test.images, name, 0) for name in CORRUPTIONS}
    digits = {
        name: {
            rep: bench_robust.digits_measures(ix, images, test.labels, 0)
            for rep, ix in indexes.items()
        }
        for name, images in sets.items()
    }
    rejected = {
        name: bench_robust.rejection_measures(indexes["encoder"], outliers(name, 500, 0), 0)
        for name in OUTLIER_SETS
    }
    return {"digits": digits, "outliers": rejected}


@NOT_REACHED
def test_robust_goal_clean_digits(robust_measures):
    clean = robust_measures["digits"]["clean"]["encoder"]
    assert clean["one_nn"] >= 0.995 and clean["f1"] >= 0.997


@NOT_REACHED
def test_robust_goal_corruptions(robust_measures):
    shifted = {k: v for k, v in robust_measures["digits"].items() if k != "clean"}
    assert np.mean([m["encoder"]["one_nn"] for m in shifted.values()]) >= 0.95
    below = [k for k, m in shifted.items() if m["encoder"]["one_nn"] < m["raw pixels"]["one_nn"]]
    assert below == []


@NOT_REACHED
def test_robust_goal_non_digits_rejected_while_true_claims_accepted(robust_measures):
    assert robust_measures["digits"]["clean"]["encoder"]["recall"] >= 0.99
    for name, measured in robust_measures["outliers"].items():
        assert measured["no_match"] >= 0.95, name
        assert measured["accepted"] <= 0.05, name


def test_a_million_images_on_both_engines_give_one_index(tmp_path):
    # The scale issue's big run, for correctness (speed and memory are tools/bench_scale.py's):
    # a million generated images through the local engine and through Ray, IVF4096.
    import ray
    from conftest import TINY_ENCODER

    from siamindex.build import BuildSettings
    from siamindex.data import load_dataset
    from siamindex.scale import build

    settings = BuildSettings(
        encoder=TINY_ENCODER,
        data_dir="mnist-aug:1M",
        splits=("train",),
        index_type="IVF4096,Flat",
        progress=False,
    )
    local, _ = build(BuildSettings(**{**settings.__dict__, "index": tmp_path / "local"}))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        on_ray, _ = build(
            BuildSettings(**{**settings.__dict__, "index": tmp_path / "ray", "engine": "ray"})
        )
    finally:
        ray.shutdown()
    assert local.facts.dataset_fingerprint == on_ray.facts.dataset_fingerprint
    assert local.store.index.ntotal == on_ray.store.index.ntotal == 1_000_000
    queries = on_ray.embed(load_dataset(None, "test").images[:2000])
    found, _ = on_ray.store.search(queries, 1, nprobe=16)
    truth, _ = local.store.search(queries, 1, nprobe=4096)  # every list: exact
    assert np.mean(found[:, 0] <= truth[:, 0] * (1 + 1e-4) + 1e-6) >= 0.95
