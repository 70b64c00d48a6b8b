"""IDX files (MNIST, Fashion-MNIST; plain or gzip) read with NumPy alone.

For the TFMOT peer scripts, which run on legacy ``tf_keras`` in their own process
and import nothing of sqjl_tf (whose reader is ``sqjl_tf.data``).
"""

import gzip
import os

import numpy as np

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Reads an IDX file (plain or gzip) into a NumPy array."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"Not an IDX file: {path!r}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim, count=int(np.prod(shape)))
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def find_idx(folders, stem):
    """The path of the IDX file ``stem`` (e.g. ``train-images-idx3-ubyte``), gzip or plain,
    under either spelling (``-idx`` / ``.idx``), in the first of ``folders`` that holds it."""
    folders = [d for d in folders if d]
    for folder in folders:
        for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz",
                     stem.replace("-idx", ".idx")):
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(f"{stem}[.gz] not found in {' nor '.join(map(repr, folders))}")
