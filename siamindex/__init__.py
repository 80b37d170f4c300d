"""siamindex: turn a trained Siamese network into a similarity-search index.

Importing the package is light: TensorFlow loads only when an encoder is built, trained or used.
"""

from siamindex.build import BuildSettings, build_index
from siamindex.errors import (
    BadIndexType,
    BadSearchSetting,
    DataError,
    EncoderError,
    IncompatibleIndex,
    IndexExists,
    IndexLocked,
    IndexNotFound,
    SiamIndexError,
)
from siamindex.facts import IndexFacts
from siamindex.index import Index, IndexInfo
from siamindex.query import Comparison, Match, MembershipResult, QueryResult, to_json
from siamindex.version import __version__

__all__ = [
    "BadIndexType",
    "BadSearchSetting",
    "BuildSettings",
    "Comparison",
    "DataError",
    "EncoderError",
    "IncompatibleIndex",
    "Index",
    "IndexExists",
    "IndexFacts",
    "IndexInfo",
    "IndexLocked",
    "IndexNotFound",
    "Match",
    "MembershipResult",
    "QueryResult",
    "SiamIndexError",
    "__version__",
    "build_index",
    "to_json",
]
