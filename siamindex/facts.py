"""``IndexFacts``: the scalar facts of an index, read from and written to HDF5 attributes in one
place, with the defaults for bundles written by older versions.

Per-row data (ids, labels, embeddings) and per-class arrays (names, thresholds) live in
``store.IndexStore``; everything else an index knows about itself is here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from siamindex.defaults import ARTICLE_THRESHOLD, DISTANCE_RULE

DISTANCE = "euclidean"  # the only distance: FAISS's squared L2 is converted everywhere
# Older bundles recorded the distance three times under these keys (with "l2" for euclidean).
_LEGACY_DISTANCE_KEYS = ("distance", "threshold_distance", "metric")
_LEGACY_VALUES = {"l2": DISTANCE}


@dataclass(frozen=True)
class IndexFacts:
    """What an index records about itself.

    Attributes:
        embedding_dim: width of the stored vectors.
        threshold: global membership threshold (Euclidean distance; member if <= it).
        index_type: "flat" or a FAISS index_factory string.
        distance: always "euclidean".
        threshold_method: how the threshold was calibrated, in words.
        threshold_f1: F1 of the calibration claims at the threshold.
        rule: "nearest-class" (a claim also needs no other class with ``support`` members
            nearer) or "distance" (the threshold alone decides: bundles built before the rule
            was recorded).
        support: how many stored members of a class must lie within the threshold for a claim
            to hold (1 for bundles built before this was recorded).
        pair_threshold: "same" when a pair's distance is below it (compare); the article's 0.5
            for bundles built before it was calibrated.
        pair_threshold_accuracy: accuracy of stored pairs at ``pair_threshold``.
        target_precision: the precision asked for at calibration, if any.
        min_recall: the least share of true claims the threshold had to accept, if any.
        true_claims_accepted: the share of calibration true claims accepted.
        open_set_rejected: the share of calibration non-digit claims rejected (None when
            calibrated without non-digits).
        encoder_sha256: the encoder file's SHA-256.
        dataset_fingerprint: SHA-256 over each row's split, label and image hash.
        source: the dataset folder, or "mnist" for the bundled one.
        splits: the splits indexed.
        created: ISO time of the build.
        versions: library versions at build time.
        next_id: the next id ``add`` hands out (ids are never reused).
        late_classes: classes added after the build (``add --new-class``); each has its own
            threshold, recalibrated on every change, once it has enough members.
        format_version: the bundle format.
    """

    embedding_dim: int
    threshold: float
    index_type: str = "flat"
    distance: str = DISTANCE
    threshold_method: str | None = None
    threshold_f1: float | None = None
    support: int = 1
    rule: str = DISTANCE_RULE
    pair_threshold: float = ARTICLE_THRESHOLD
    pair_threshold_accuracy: float | None = None
    target_precision: float | None = None
    min_recall: float | None = None
    true_claims_accepted: float | None = None
    open_set_rejected: float | None = None
    encoder_sha256: str | None = None
    dataset_fingerprint: str | None = None
    source: str = "mnist"
    splits: tuple[str, ...] = ()
    created: str | None = None
    versions: dict[str, str] = field(default_factory=dict)
    next_id: int = 0
    late_classes: tuple[str, ...] = ()
    format_version: int | None = None

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> IndexFacts:
        """Read the facts from HDF5 attributes (JSON strings already decoded), defaulting what
        older bundles lack.

        Raises:
            KeyError: ``embedding_dim`` or ``threshold`` is missing.
        """
        for required in ("embedding_dim", "threshold"):
            if required not in attrs:
                raise KeyError(f"attribute {required!r} is missing")
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in attrs.items() if key in known}
        for key in _LEGACY_DISTANCE_KEYS:
            if key in attrs:
                values["distance"] = _LEGACY_VALUES.get(str(attrs[key]), str(attrs[key]))
                break
        if values.get("target_precision") == -1.0:
            del values["target_precision"]  # -1 stood for "none" in bundles of 0.1.0
        for key in ("splits", "late_classes"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)

    def to_attrs(self) -> dict[str, Any]:
        """HDF5 attribute values: None is left out, lists and dicts become JSON text."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            if isinstance(value, dict | list | tuple):
                value = json.dumps(list(value) if isinstance(value, tuple) else value)
            out[key] = value
        return out
