"""What callers catch: every library error is a SiamIndexError; old spellings only warn."""

from __future__ import annotations

import inspect

from siamindex import errors


def test_every_error_is_a_siamindex_error_and_old_spellings_warn():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)]
    raised = [c for c in classes if issubclass(c, Exception) and not issubclass(c, Warning)]
    assert raised and all(issubclass(c, errors.SiamIndexError) for c in raised)
    assert issubclass(errors.OldSpelling, DeprecationWarning)
