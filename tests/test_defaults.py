"""The shared vocabulary: old spellings map to new ones, with a warning that names both."""

from __future__ import annotations

import pytest

from siamindex.defaults import ALIASES, ARCHITECTURES, SAMPLERS, canonical
from siamindex.errors import OldSpelling


def test_old_spellings_map_with_a_warning():
    with pytest.warns(OldSpelling, match="sampler 'seed' is now called 'article'"):
        assert canonical("sampler", "seed") == "article"
    with pytest.warns(OldSpelling, match="architecture 'seed-mlp' is now called 'article-mlp'"):
        assert canonical("architecture", "seed-mlp") == "article-mlp"


def test_current_and_unknown_names_pass_through_silently(recwarn):
    assert canonical("sampler", "in-batch") == "in-batch"
    assert canonical("architecture", "transformer") == "transformer"
    assert not recwarn.list


def test_every_alias_points_at_a_current_name():
    assert set(ALIASES["architecture"].values()) <= set(ARCHITECTURES)
    assert set(ALIASES["sampler"].values()) <= set(SAMPLERS)
    assert not set(ALIASES["sampler"]) & set(SAMPLERS)
