"""siamindex: turn a trained Siamese network into a similarity-search index.

Importing the package is light: TensorFlow loads only when an encoder is built, trained or used.
The first thing it does is choose the CPU kernel of FAISS's OpenBLAS, before FAISS can load it
(``siamindex.blas``).
"""

# ruff: noqa: E402  (the kernel must be chosen before any module below can import FAISS)

from siamindex.blas import choose_kernel

choose_kernel()


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
