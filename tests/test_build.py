"""The build pipeline: settings in, a calibrated, verified bundle out (with the fake encoder)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from fakes import fake_encoder_file

import siamindex
from siamindex.build import BuildSettings, build_index, dataset_fingerprint
from siamindex.bundle import ENCODER_FILE, FAISS_FILE, MANIFEST_FILE, METADATA_FILE, TRAINING_FILE
from siamindex.data import sha256_file
from siamindex.errors import BadIndexType, DataError, IndexExists


def _settings(tmp_path, small_idx_dir, **changes):
    return BuildSettings(
        encoder=fake_encoder_file(tmp_path / "enc"),
        index=tmp_path / "idx",
        data_dir=small_idx_dir,
        progress=False,
        **changes,
    )


def test_build_writes_a_complete_self_describing_bundle(fake_index, fake_bundle):
    files = sorted(p.name for p in fake_index.folder.iterdir())
    assert files == sorted([ENCODER_FILE, FAISS_FILE, METADATA_FILE, MANIFEST_FILE])
    with h5py.File(fake_index.folder / METADATA_FILE) as handle:
        for name in ("ids", "labels", "split", "source_index", "image_sha256", "embeddings"):
            assert handle[name].shape[0] == 1300
        attrs = dict(handle.attrs)
        hashes = handle["image_sha256"][()].astype(str)
        labels, splits = handle["labels"][()], handle["split"].asstr()[()]
    assert attrs["distance"] == "euclidean" and "metric" not in attrs
    assert attrs["format_version"] == 1 and attrs["count"] == 1300
    assert attrs["dataset_fingerprint"] == dataset_fingerprint(hashes, labels, splits)
    versions = json.loads(attrs["versions"])
    assert versions["siamindex"] == siamindex.__version__ and {"faiss", "h5py"} <= set(versions)
    facts = fake_index.facts
    assert facts.support == 3 and facts.index_type == "flat" and facts.embedding_dim == 8
    assert facts.splits == ("train", "test") and facts.target_precision is None
    assert "leave-one-out" in str(facts.threshold_method) and 0 < facts.threshold_f1 <= 1
    assert facts.encoder_sha256 == sha256_file(fake_index.folder / ENCODER_FILE)
    info = fake_index.info()
    assert info.per_split == {"test": 300, "train": 1000} and info.count == 1300
    assert sum(info.per_class.values()) == 1300 and len(info.class_thresholds) == 10


def test_build_embeds_every_image_once_in_chunks(tmp_path, small_idx_dir, fake_encoder):
    from fakes import FakeEncoder

    counting = FakeEncoder(embedding_dim=8)
    index, phases = build_index(_settings(tmp_path, small_idx_dir, batch_size=64), embed=counting)
    assert counting.calls == 1300
    assert set(phases.seconds) == {"load", "embed", "add", "calibrate", "write"}
    # The stored vectors are the encoder's, row for row (the same encoder, seeded alike).
    np.testing.assert_allclose(
        index.store.rows.embeddings[:5], fake_encoder(index_images(small_idx_dir)[:5]), atol=1e-6
    )


def index_images(data_dir):
    from siamindex.data import load_dataset

    return load_dataset(data_dir, "train").images


def test_existing_index_needs_force(tmp_path, small_idx_dir, fake_encoder):
    settings = _settings(tmp_path, small_idx_dir, splits=("test",))
    first, _ = build_index(settings, embed=fake_encoder)
    with pytest.raises(IndexExists, match="pass --force"):
        build_index(settings, embed=fake_encoder)
    again, _ = build_index(
        BuildSettings(**{**settings.__dict__, "force": True, "splits": ("train",)}),
        embed=fake_encoder,
    )
    assert again.info().count == 1000 and again.folder != first.folder


def test_bad_settings_are_rejected_before_any_work(tmp_path, small_idx_dir):
    from fakes import FakeEncoder

    fake_encoder = FakeEncoder()
    with pytest.raises(BadIndexType, match="FAISS rejects index type 'Bogus99'"):
        build_index(_settings(tmp_path, small_idx_dir, index_type="Bogus99"), embed=fake_encoder)
    with pytest.raises(DataError, match="support must be at least 1"):
        build_index(_settings(tmp_path, small_idx_dir, support=0), embed=fake_encoder)
    assert not (tmp_path / "idx").exists() and fake_encoder.calls == 0


def test_settings_are_recorded(tmp_path, small_idx_dir, fake_encoder):
    settings = _settings(tmp_path, small_idx_dir, support=5, target_precision=0.9, seed=3)
    index, _ = build_index(settings, embed=fake_encoder)
    assert index.facts.support == 5 and index.facts.target_precision == 0.9
    assert "precision >= 0.9" in str(index.facts.threshold_method)
    assert "5th nearest member" in str(index.facts.threshold_method)


def test_training_report_is_kept_only_when_it_is_the_encoders(
    tmp_path, small_idx_dir, fake_encoder
):
    settings = _settings(tmp_path, small_idx_dir, splits=("test",))
    report = settings.encoder.with_suffix(".json")
    report.write_text(json.dumps({"encoder_sha256": "someone else's"}))
    index, _ = build_index(settings, embed=fake_encoder)
    assert index.training_report() is None
    report.write_text(json.dumps({"encoder_sha256": sha256_file(settings.encoder), "epochs": 2}))
    index, _ = build_index(
        BuildSettings(**{**settings.__dict__, "force": True}), embed=fake_encoder
    )
    assert (index.folder / TRAINING_FILE).is_file() and index.training_report()["epochs"] == 2


def test_the_search_layer_does_not_import_training():
    import subprocess
    import sys

    code = (
        "import sys, siamindex.index, siamindex.build, siamindex.query; "
        "bad = [m for m in ('siamindex.training', 'tensorflow', 'keras') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_set_calibration_is_recorded_and_off_for_other_datasets(
    tmp_path, small_idx_dir, fake_encoder
):
    # The distance rule: the floor counts every true claim (under nearest-class, only those
    # no other class is nearer to; tested in test_evaluation).
    plain, _ = build_index(_settings(tmp_path, small_idx_dir, rule="distance"), embed=fake_encoder)
    assert plain.facts.open_set_rejected is None  # --data: its classes may be letters
    assert plain.facts.min_recall == 0.99 and plain.facts.true_claims_accepted >= 0.99
    assert plain.facts.rule == "distance"
    no_floor, _ = build_index(
        _settings(tmp_path, small_idx_dir, min_recall=0, force=True, rule="distance"),
        embed=fake_encoder,
    )
    assert (
        no_floor.facts.min_recall is None and "true claims" not in no_floor.facts.threshold_method
    )
    assert no_floor.facts.threshold <= plain.facts.threshold
    settings = _settings(tmp_path, small_idx_dir, open_set=300, min_recall=0.9, force=True)
    index, _ = build_index(settings, embed=fake_encoder)
    assert index.facts.min_recall == 0.9
    # The recorded share is what the index does: the same non-digits, each claimed as every
    # class (calibration drew one class each), are rejected as often.
    from siamindex.exposure import exposure

    unlike = exposure(300, seed=10_000 + settings.seed)
    names = list(index.store.class_names)
    results = index.check(np.repeat(unlike, len(names), axis=0), names * len(unlike))
    rejected = np.mean([not r.is_member for r in results])
    assert abs(rejected - index.facts.open_set_rejected) < 0.06
    assert "300 non-digits" in str(index.facts.threshold_method)
    # Recorded in the bundle: a fresh open reads the same facts.
    again = type(index).open(index.path, embed=fake_encoder)
    assert again.facts.open_set_rejected == index.facts.open_set_rejected
    assert again.info().to_dict()["true_claims_accepted"] == index.facts.true_claims_accepted
