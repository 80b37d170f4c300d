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

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "EncoderError",
    "IncompatibleIndex",
    "IndexLocked",
    "IndexNotFound",
    "SiamIndexError",
    "__version__",
]
