"""Writing compressed models to small files.

:func:`save_compressed` stores a pruned, codebook-quantized Keras model as one
file of roughly ``b`` bits per nonzero plus the cheapest encoding of the
nonzero positions; :func:`load_compressed` rebuilds it bit-exactly and
:func:`file_size_breakdown` reports where the bytes go. The pure-numpy
encoders live in :mod:`sqjl_tf.export.bitpack`.
"""

from sqjl_tf.export.compressed import (
    FORMAT_VERSION,
    MAGIC,
    FileSizeBreakdown,
    LayerSize,
    file_size_breakdown,
    load_compressed,
    save_compressed,
)

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "FileSizeBreakdown",
    "LayerSize",
    "file_size_breakdown",
    "load_compressed",
    "save_compressed",
]
