"""The version comes from the installed package's metadata, so it has one source."""

from __future__ import annotations

from importlib.metadata import version

import siamindex


def test_version_is_the_package_metadata():
    assert siamindex.__version__ == version("siamindex")
