"""The words and defaults that the CLI and the library share, importable without TensorFlow.

One vocabulary (see the README's "Names" table):

* **class**: what an image belongs to, by name ("7"). Per-row integer arrays that hold a class's
  position in ``class_names`` are called ``labels``.
* **index**: a bundle found by name or path; every command takes it as ``--index NAME``.
* **encoder**: always a ``.keras`` file; the network's shape is its **architecture**.
* **article**: the article's protocol (``--architecture article-mlp --sampler article``);
  **seed** only ever means the random seed.

Old spellings are mapped by ``canonical``, which says once that they are deprecated.
"""

from __future__ import annotations

import warnings

from siamindex.errors import OldSpelling

ARCHITECTURES = ("article-mlp", "cnn")
DEFAULT_ARCHITECTURE = "cnn"
SAMPLERS = ("article", "balanced", "in-batch")
PAIR_SAMPLERS = ("article", "balanced")  # the samplers that draw explicit pairs
DEFAULT_SAMPLER = {"article-mlp": "article", "cnn": "in-batch"}
DEFAULT_EMBEDDING_DIM = {"article-mlp": 128, "cnn": 64}

PREPARE_MODES = ("auto", "mnist", "none")  # how IMAGE arguments become MNIST-like (prepare.py)

DEFAULT_INDEX = "mnist"
INDEX_ENV = "SIAMINDEX_INDEX"  # default index name for every command
INDEXES_ENV = "SIAMINDEX_INDEXES"  # the folder that names are found in

DEFAULT_BATCH_SIZE = 1024  # images per encoder call when embedding
ARTICLE_THRESHOLD = 0.5  # the article's fixed pair threshold
# A membership claim holds when this many stored members of the class lie within the threshold.
# One stray or mislabelled stored image (MNIST has some) then cannot make a whole neighbouring
# class "members": with 1, a single train "3" inside the 5s accepted 85% of "is a 3" claims
# about 5s.
DEFAULT_SUPPORT = 3
# The membership rule: "distance" accepts a claim when the support-th nearest member of the
# class lies within the threshold; "nearest-class" also asks that no other class has as many
# members nearer (the claimed class is the one a support-nearest-neighbour vote would give), so
# that a dense neighbouring class (a 4 among the 9s of a million distorted digits) cannot
# answer "yes" for its neighbour. Bundles record theirs; older ones answer by distance.
DISTANCE_RULE = "distance"
NEAREST_CLASS_RULE = "nearest-class"
RULES = (NEAREST_CLASS_RULE, DISTANCE_RULE)
DEFAULT_RULE = NEAREST_CLASS_RULE
# Class-restricted search in IVF indexes of at least this many rows runs inside the index with a
# per-class id selector (no per-class copy of the vectors), visiting this many lists by default.
SELECTOR_FROM = 200_000
DEFAULT_CLASS_NPROBE = 32
# HNSW index types search a graph per class (the index's own M), with this breadth unless a call
# gives its own: recall@3 0.998 on 10,000 stored train rows of the default encoder's 60,000,
# each left out of its class (12: 0.997, 24: 0.9996); chosen there, never on the test split.
DEFAULT_CLASS_EF = 16
# The acceptance rule (build-index): at least this share of true claims accepted, and this many
# generated non-digits among the false claims it is calibrated on (bundled MNIST only).
DEFAULT_MIN_RECALL = 0.99
DEFAULT_OPEN_SET = 2000
# A class added after the build (add --new-class) gets its own threshold once it has this many
# members (leave-one-out over fewer is mostly noise); until then it uses the global one.
LATE_CLASS_MIN_MEMBERS = 10

# Old spelling -> current spelling, per kind of value.
ALIASES: dict[str, dict[str, str]] = {
    "architecture": {"seed-mlp": "article-mlp"},
    "sampler": {"seed": "article"},
}


def canonical(kind: str, value: str) -> str:
    """The current spelling of ``value`` (an architecture or sampler name).

    An old spelling still works and warns (``OldSpelling``, a ``DeprecationWarning``) naming
    the new one.
    """
    new = ALIASES.get(kind, {}).get(value)
    if new is None:
        return value
    warnings.warn(
        f"{kind} '{value}' is now called '{new}'; the old name will be removed.",
        OldSpelling,
        stacklevel=3,
    )
    return new
