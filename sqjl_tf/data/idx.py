"""Reader of the IDX format of the MNIST and Fashion-MNIST files."""

from __future__ import annotations

import os
import zlib
from typing import Union

import numpy as np

# IDX type code -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


_MAX_DEFLATE_RATIO = 1032  # deflate's largest expansion: a file cannot honestly inflate more


def _declared_size(head: bytes) -> int:
    """Bytes an IDX file with this start announces (header and data); 0 if it cannot tell."""
    if len(head) < 4 or head[0] or head[1] or head[2] not in _IDX_DTYPES:
        return 0
    header = 4 + 4 * head[3]
    if len(head) < header:
        return 0
    shape = np.frombuffer(head, dtype=">u4", count=head[3], offset=4)
    count = 1
    for d in shape:
        count *= int(d)
    return header + count * _IDX_DTYPES[head[2]].itemsize


def _gunzip_bounded(data: bytes, path: str) -> bytes:
    """Inflates gzip ``data`` into exactly the bytes its IDX header announces.

    The announced size is checked against deflate's maximum ratio to the
    file's size before anything is allocated for it, and inflating stops at
    it: a gzip bomb costs at most what its header honestly claims.
    """
    limit = _MAX_DEFLATE_RATIO * len(data) + 1024
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
    try:
        head = inflater.decompress(data, 4 + 4 * 255)
        total = _declared_size(head)
        if not total:
            return head  # not an IDX header: read_idx says so
        if total > limit:
            raise ValueError(
                f"Invalid IDX file {path!r}: its header announces {total} bytes, more than "
                f"deflate can give from a {len(data)}-byte file.")
        if len(head) > total:
            raise ValueError(f"Invalid IDX file {path!r}: more data than its header "
                             f"announces ({total} bytes).")
        out = bytearray(total)
        out[:len(head)] = head
        filled, rest = len(head), inflater.unconsumed_tail
        while rest and not inflater.eof:
            chunk = inflater.decompress(rest, min(1 << 24, total - filled + 1))
            if filled + len(chunk) > total:
                raise ValueError(f"Invalid IDX file {path!r}: more data than its header "
                                 f"announces ({total} bytes).")
            out[filled:filled + len(chunk)] = chunk
            filled += len(chunk)
            rest = inflater.unconsumed_tail
        if not inflater.eof:
            raise EOFError("the gzip stream ends early")
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(
            f"Invalid IDX file {path!r}: a damaged gzip file ({type(err).__name__}: {err})."
        ) from err
    return bytes(out[:filled])


def read_idx(path: Union[str, os.PathLike]) -> np.ndarray:
    """Reads an IDX file (plain or gzip-compressed) into a NumPy array.

    The IDX header is two zero bytes, a type code (0x08 ubyte, 0x09 byte,
    0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of
    dimensions, then each dimension as a big-endian uint32. Compression is
    detected from the gzip magic bytes, not from the file name.

    Args:
        path: Path of the file, e.g. ``"train-images-idx3-ubyte.gz"``.

    Returns:
        An array of the stored shape, in native byte order (``uint8`` for the
        MNIST images and labels).

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file is not a valid IDX file (a wrong header, a
            truncated or damaged file).

    Example:

    >>> images = read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
    >>> images.shape, images.dtype
    ((10000, 28, 28), dtype('uint8'))
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip_bounded(data, path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"Invalid value for argument `path`. Received: {path!r}. "
            "Expected an IDX file (header 0x00 0x00 <type> <ndim>)."
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"Invalid IDX file {path!r}: truncated header.")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = int(np.prod(shape, dtype=np.int64))
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(
            f"Invalid IDX file {path!r}: the header announces shape {shape} "
            f"({count * dtype.itemsize} bytes) but {len(data) - header} bytes follow."
        )
    array = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder("="))
