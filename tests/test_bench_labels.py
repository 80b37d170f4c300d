"""The issue-12 benchmarks, small and seeded: few-shot classes (tools/bench_fewshot.py), little
labelled data (tools/bench_littledata.py) and flipped-label audits (tools/bench_audit.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "tools"))
import bench_audit  # noqa: E402
import bench_fewshot  # noqa: E402
import bench_littledata  # noqa: E402

from siamindex.evaluation import raw_pixels  # noqa: E402

TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"


def test_flipped_labels_are_found_by_the_audit_on_raw_pixels(mnist_test):
    vectors = raw_pixels(mnist_test.images[:2000])
    labels, flipped = bench_audit.flip(mnist_test.labels[:2000], 0.02, np.random.default_rng(0))
    assert len(flipped) == 40 and np.all(labels[flipped] != mnist_test.labels[flipped])
    assert np.array_equal(np.delete(labels, flipped), np.delete(mnist_test.labels[:2000], flipped))
    ranked, _ = bench_audit.found(vectors, labels, k=10)
    top = ranked[: len(flipped)]
    # Raw pixels on 2,000 digits: most planted flips lead the list, far above chance (2%).
    assert np.isin(top, flipped).mean() > 0.5


def test_fewshot_adds_unseen_classes_and_measures_them(tmp_path):
    data = bench_fewshot.write_seen_split(tmp_path / "data", train_size=3000)
    results = bench_fewshot.run(
        "tiny", str(TINY_ENCODER), data, tmp_path, 0, ["1", "10", "100"], test_size=600
    )
    assert [r["shots"] for r in results] == ["1", "10", "100"]
    one, ten, hundred = results
    # One example per class leaves the new classes on the global threshold; ten calibrate
    # their own (recorded per class), and claims about them are then judged by it.
    assert set(one["late_thresholds"].values()) == {None}
    assert one["threshold_kinds"] == ["global"] and ten["threshold_kinds"] == ["per-class"]
    assert all(t is not None for t in ten["late_thresholds"].values())
    # More examples help the unseen digits; a few do not crowd out the seen ones (this tiny
    # index stores only 1,800 seen digits, so 100 of each new one already weigh on them).
    assert hundred["unseen_1nn"] > one["unseen_1nn"] and hundred["f1"] > one["f1"]
    for r in results:
        assert 0 <= r["new_accepted_as_old"] <= 1 and r["claims"] > 100
    assert one["seen_1nn"] == one["seen_1nn_before"]  # one example each changes nothing here
    assert ten["seen_1nn"] >= ten["seen_1nn_before"] - 0.02


def test_littledata_gives_small_sets_enough_steps_and_measures_both(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(
        sys, "argv", ["x", "--sizes", "100", "--min-steps", "1", "--out-dir", str(out)]
    )
    bench_littledata.main()
    (found,) = json.loads((out / "bench_littledata.json").read_text())
    assert found["labelled"] == 100 and Path(found["encoder_file"]).is_file()
    for name in ("encoder", "raw pixels"):
        assert 0.3 < found[name]["one_nn"] <= 1 and 0 < found[name]["f1"] <= 1
    # Raw pixels with 100 stored digits: the known figure for 10 per class, roughly.
    assert found["raw pixels"]["one_nn"] == pytest.approx(0.7, abs=0.1)
