"""siamindex: turn a trained Siamese network into a similarity-search index.

Importing the package is light: TensorFlow loads only when an encoder is built, trained or used.
"""

from siamindex.errors import (
    DataError,
    EncoderError,
    IncompatibleIndex,
    IndexLocked,
    IndexNotFound,
    SiamIndexError,
)
from siamindex.index import Index
from siamindex.query import Comparison, Match, MembershipResult, QueryResult

__version__ = "0.1.0"

__all__ = [
    "Comparison",
    "Index",
    "Match",
    "MembershipResult",
    "QueryResult",
    "DataError",
    "EncoderError",
    "IncompatibleIndex",
    "IndexLocked",
    "IndexNotFound",
    "SiamIndexError",
    "__version__",
]
