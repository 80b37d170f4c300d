"""The exceptions siamindex raises. The CLI turns each into a one-line message."""

from __future__ import annotations


class SiamIndexError(Exception):
    """Base class: anything the user can fix gets one of these, with the fix in the message."""


class DataError(SiamIndexError):
    """An input file or folder is missing, damaged or not in a format we read."""


class EncoderError(SiamIndexError):
    """An encoder file cannot be loaded or does not fit."""


class IndexNotFound(SiamIndexError):
    """No index exists at the given name or path."""


class ItemNotFound(SiamIndexError):
    """A stored id (or its pixels) asked for is not in the index."""


class IndexExists(SiamIndexError):
    """An index already exists where a new one would be written (and replacing was not asked)."""


class IncompatibleIndex(SiamIndexError):
    """An index exists but fails verification (checksums, counts, dimensions, format)."""


class MissingExtra(SiamIndexError):
    """An optional dependency (an extra such as ``viz``) is not installed."""


class IndexLocked(SiamIndexError):
    """Another process is writing to the index."""


class BadIndexType(SiamIndexError):
    """FAISS does not understand an index type, or cannot train it on the data given."""


class BadSearchSetting(SiamIndexError):
    """A search setting (nprobe, ef_search) does not apply to the index's type."""


class OldSpelling(DeprecationWarning):
    """An old name of an option value or a column was used; the message names the new one."""


class EngineError(SiamIndexError):
    """The engine that embeds shards (Ray) is missing, cannot start, or failed mid-build."""
