"""Pair sampling for Siamese training and pair-accuracy evaluation.

Pairs are returned as row indices into the image array, not as copies of the images, so that
a million pairs cost 16 MB rather than 1.5 GB; ``gather`` turns them into image arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from siamindex.defaults import PAIR_SAMPLERS, canonical

# The article used min_equals 15,000 of 40,000 training images and 800 of 2,000 validation images.
ARTICLE_TRAIN_SAME_FRACTION = 15_000 / 40_000
ARTICLE_EVAL_SAME_FRACTION = 800 / 2_000


@dataclass(frozen=True)
class Pairs:
    """Pairs as indices: ``left[i]`` and ``right[i]`` rows, ``is_same[i]`` 1 if same class.

    Attributes:
        left: (num_pairs,) int64.
        right: (num_pairs,) int64.
        is_same: (num_pairs,) float32, 1.0 = same class, 0.0 = different.
    """

    left: np.ndarray
    right: np.ndarray
    is_same: np.ndarray

    def __len__(self) -> int:
        return int(self.left.shape[0])


def _members(labels: np.ndarray) -> dict[int, np.ndarray]:
    return {int(c): np.flatnonzero(labels == c) for c in np.unique(labels)}


def _same_class_partners(
    labels: np.ndarray, rows: np.ndarray, rng: np.random.Generator, exclude_self: bool
) -> np.ndarray:
    """A random partner of the same class for each row (itself allowed unless exclude_self)."""
    partners = np.empty(len(rows), dtype=np.int64)
    for label, members in _members(labels).items():
        where = np.flatnonzero(labels[rows] == label)
        if exclude_self and len(members) > 1:
            # Draw from the other len-1 members: pick a position, skip over the row's own one.
            own = np.searchsorted(members, rows[where])
            pick = rng.integers(0, len(members) - 1, size=len(where))
            pick += pick >= own
            partners[where] = members[pick]
        else:
            partners[where] = members[rng.integers(0, len(members), size=len(where))]
    return partners


def _other_class_partners(
    labels: np.ndarray, rows: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A random partner of a different class for each row."""
    partners = np.empty(len(rows), dtype=np.int64)
    for label in np.unique(labels[rows]):
        others = np.flatnonzero(labels != label)
        if len(others) == 0:
            raise ValueError("balanced pairs need at least two classes")
        where = np.flatnonzero(labels[rows] == label)
        partners[where] = others[rng.integers(0, len(others), size=len(where))]
    return partners


def article_pairs(labels: np.ndarray, min_equals: int, rng: np.random.Generator) -> Pairs:
    """The article's sampler: one pair per image, in order.

    The first ``min_equals`` images get a random partner of their own class (the image itself
    allowed); the rest a random partner from the whole set, which is same-class by chance.

    Args:
        labels: (n,) integer class labels.
        min_equals: how many leading images get a same-class partner.
        rng: the random generator.

    Returns:
        n pairs, ``left`` = 0..n-1.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if not 0 <= min_equals <= n:
        raise ValueError(f"min_equals must be in [0, {n}], got {min_equals}")
    left = np.arange(n, dtype=np.int64)
    right = np.empty(n, dtype=np.int64)
    right[:min_equals] = _same_class_partners(labels, left[:min_equals], rng, exclude_self=False)
    right[min_equals:] = rng.integers(0, n, size=n - min_equals)
    return Pairs(left, right, (labels[left] == labels[right]).astype(np.float32))


def balanced_pairs(labels: np.ndarray, per_image: int, rng: np.random.Generator) -> Pairs:
    """For each image, ``per_image`` same-class partners and ``per_image`` other-class partners.

    Same-class partners exclude the image itself whenever its class has another member. Pairs
    come shuffled.
    """
    labels = np.asarray(labels)
    if per_image < 1:
        raise ValueError(f"per_image must be >= 1, got {per_image}")
    rows = np.repeat(np.arange(len(labels), dtype=np.int64), per_image)
    same = _same_class_partners(labels, rows, rng, exclude_self=True)
    other = _other_class_partners(labels, rows, rng)
    left = np.concatenate([rows, rows])
    right = np.concatenate([same, other])
    order = rng.permutation(len(left))
    left, right = left[order], right[order]
    return Pairs(left, right, (labels[left] == labels[right]).astype(np.float32))


def make_pairs(
    labels: np.ndarray,
    sampler: str,
    rng: np.random.Generator,
    same_fraction: float = ARTICLE_TRAIN_SAME_FRACTION,
    per_image: int = 2,
) -> Pairs:
    """Sample pairs by sampler name ("article" or "balanced"; "seed" is the old "article").

    Args:
        labels: (n,) integer class labels.
        sampler: "article" (the article's one pair per image) or "balanced".
        rng: the random generator.
        same_fraction: for "article", min_equals as a fraction of n.
        per_image: for "balanced", partners of each kind per image.
    """
    sampler = canonical("sampler", sampler)
    if sampler == "article":
        return article_pairs(labels, int(round(same_fraction * len(labels))), rng)
    if sampler == "balanced":
        return balanced_pairs(labels, per_image, rng)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(PAIR_SAMPLERS)}")


def gather(images: np.ndarray, pairs: Pairs) -> tuple[np.ndarray, np.ndarray]:
    """Images of both sides of each pair: two (num_pairs, ...) arrays."""
    return images[pairs.left], images[pairs.right]
