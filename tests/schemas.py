"""The machine output of every command, pinned: field names and JSON types.

A renamed, dropped or retyped field fails ``assert_schema``; so does a new field until it is
added here (then it is a decision, not an accident). ``float`` accepts JSON integers too
(``json.dumps(1.0)`` is "1.0", but a count-like float may print whole).
"""

from __future__ import annotations

from typing import Any

OPTIONAL_FLOAT = (float, type(None))
NUMBER = (float, int)


class Mapping:
    """A JSON object with arbitrary keys (class names, history names) of one value type."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Nullable:
    """A JSON value of the given schema, or null."""

    def __init__(self, value: Any) -> None:
        self.value = value


def assert_schema(value: Any, schema: Any, where: str = "$") -> None:
    """Fail with the JSON path of the first field that differs from ``schema``."""
    if isinstance(schema, Nullable):
        if value is not None:
            assert_schema(value, schema.value, where)
    elif isinstance(schema, dict):
        assert isinstance(value, dict), f"{where}: {type(value).__name__}, expected an object"
        assert set(value) == set(schema), (
            f"{where}: fields {sorted(set(value) ^ set(schema))} differ from the pinned schema"
        )
        for key, sub in schema.items():
            assert_schema(value[key], sub, f"{where}.{key}")
    elif isinstance(schema, Mapping):
        assert isinstance(value, dict), f"{where}: expected an object"
        for key, sub in value.items():
            assert_schema(sub, schema.value, f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), f"{where}: {type(value).__name__}, expected a list"
        for i, item in enumerate(value):
            assert_schema(item, schema[0], f"{where}[{i}]")
    else:
        wanted = schema if isinstance(schema, tuple) else (schema,)
        if float in wanted:
            wanted = (*wanted, int)
        ok = isinstance(value, wanted) and not (isinstance(value, bool) and bool not in wanted)
        assert ok, f"{where}: {value!r} is not {wanted}"


FACTS = {
    "embedding_dim": int,
    "threshold": float,
    "index_type": str,
    "distance": str,
    "threshold_method": str,
    "threshold_f1": float,
    "support": int,
    "rule": str,
    "pair_threshold": float,
    "pair_threshold_accuracy": float,
    "target_precision": OPTIONAL_FLOAT,
    "min_recall": OPTIONAL_FLOAT,
    "true_claims_accepted": OPTIONAL_FLOAT,
    "open_set_rejected": OPTIONAL_FLOAT,
    "encoder_sha256": str,
    "dataset_fingerprint": str,
    "source": str,
    "splits": [str],
    "created": str,
    "versions": Mapping(str),
    "next_id": int,
    "late_classes": [str],
    "format_version": int,
}
INFO = {
    **FACTS,
    "name": str,
    "path": str,
    "bundle": str,
    "count": int,
    "per_class": Mapping(int),
    "per_split": Mapping(int),
    "class_thresholds": Mapping(float),
    "size_bytes": int,
    "blas": {
        "kernel": (str, type(None)),
        "openblas": (str, type(None)),
        "source": str,
        "requested": (str, type(None)),
    },
}
BUILD = {**INFO, "build_seconds": Mapping(float), "build_peak_mb": Mapping(float)}
MATCH = {"query": str, "rank": int, "id": int, "class": str, "split": str, "distance": float}
QUERY = [
    {
        "query": str,
        "predicted": (str, type(None)),
        "distance": float,
        "threshold": float,
        "matches": [MATCH],
        "probability": OPTIONAL_FLOAT,
    }
]
QUERY_CSV = ["query", "predicted", "probability", "rank", "id", "class", "split", "distance"]
COUNTS = {
    "accuracy": float,
    "precision": float,
    "recall": float,
    "f1": float,
    "true_positive": int,
    "false_positive": int,
    "false_negative": int,
    "true_negative": int,
}
CHECK_RESULT = {
    "query": str,
    "class": str,
    "is_member": bool,
    "distance": float,
    "threshold": float,
    "threshold_kind": str,
    "nearest_id": int,
    "support_distance": float,
    "support": int,
    "true_class": (str, type(None)),
    "probability": OPTIONAL_FLOAT,
    "nearer_class": (str, type(None)),
}
CHECK = {
    "results": [CHECK_RESULT],
    "summary": {**COUNTS, "claims": int, "per_class": Mapping(COUNTS)},
}
CHECK_CSV = [
    "image",
    "class",
    "member",
    "distance",
    "support_distance",
    "threshold",
    "threshold_kind",
    "nearest_id",
    "true_class",
    "probability",
    "nearer_class",
]
COMPARE = {"first": str, "second": str, "distance": float, "threshold": float, "same": bool}
ADD = {
    "index": str,
    "class": str,
    "ids": [int],
    "count": int,
    "class_threshold": OPTIONAL_FLOAT,
    "threshold_note": (str, type(None)),
}
RELABEL = {"index": str, "class": str, "relabelled": [int], "count": int}
SUSPECT = {
    "id": int,
    "class": str,
    "suggested": str,
    "disagreement": float,
    "ratio": OPTIONAL_FLOAT,
    "neighbour_ids": [int],
    "neighbour_classes": [str],
    "source_index": int,
    "split": str,
}
AUDIT = {"index": str, "k": int, "count": int, "flagged": int, "suspects": [SUSPECT]}
REMOVE = {"index": str, "removed": [int], "count": int}
SPLITS3 = {"train": float, "val": float, "test": float}
TRAIN = {
    "encoder_file": str,
    "encoder_sha256": str,
    "settings": {
        "architecture": str,
        "sampler": str,
        "epochs": int,
        "batch_size": int,
        "margin": float,
        "seed": int,
        "val_fraction": float,
        "embedding_dim": int,
        "learning_rate": float,
        "patience": int,
        "data_dir": (str, type(None)),
        "train_size": (int, type(None)),
        "test_size": (int, type(None)),
        "align_threshold": bool,
        "augment": bool,
        "outlier_share": float,
        "classes": Nullable([str]),
        "labelled": (int, type(None)),
        "head": int,
        "article_reproduction": bool,
    },
    "optimizer": str,
    "output_scale": float,
    "epochs_run": int,
    "early_stopping_monitor": (str, type(None)),
    "train_seconds": float,
    "history": Mapping([float]),
    "sizes": {"train": int, "val": int, "test": int},
    "pair_threshold": float,
    "pair_accuracy": SPLITS3,
    "roc_auc": SPLITS3,
    "versions": Mapping(str),
}
MEMBERSHIP = {**COUNTS, "claims": int, "per_class_f1": Mapping(float)}
MEASURES = {
    "pair_accuracy": OPTIONAL_FLOAT,
    "roc_auc": float,
    "one_nn_accuracy": float,
    "precision_at_1": float,
    "map_at_r": float,
    "threshold": float,
    "threshold_method": str,
    "membership": MEMBERSHIP,
}
EVALUATE = {"sizes": {"stored": int, "queries": int}, "encoder": MEASURES, "raw_pixels": MEASURES}
