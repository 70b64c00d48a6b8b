"""Size checks of an ``.npz`` archive before NumPy reads it.

``np.load`` trusts the archive: a member's array header may declare any shape
(NumPy allocates it before reading a byte of data), and a compressed member
may unpack to any size. :func:`check_sizes` reads only the zip directory and
each member's array header, and refuses an archive whose members declare more
than its size justifies, before anything is allocated.
"""

from __future__ import annotations

import math
import os
import zipfile

import numpy as np

# Members zipfile inflates in bounded steps (``decompressobj().decompress(data, n)``); it
# unpacks bzip2 and LZMA members a whole read at a time, whatever that inflates to.
_BOUNDED_COMPRESSION = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _read_header(member, version):
    """Shape and dtype from an array header (after the magic), as ``np.load`` reads them."""
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(member)
    elif version in ((2, 0), (3, 0)):  # 3.0 is 2.0 with a UTF-8 header: same shape and size
        shape, _, dtype = np.lib.format.read_array_header_2_0(member)
    else:
        raise ValueError(f"unsupported array format version {version}")
    return shape, dtype


def check_sizes(path: str, max_ratio: int = 1) -> None:
    """Refuses an archive whose members declare more than its size justifies.

    Every member must unpack to at most ``max_ratio`` times the archive's
    size, all of them together too, with a compression that unpacks in
    bounded steps; every member that ``np.load`` reads as an array (one that
    starts with the ``.npy`` magic, whatever its name) must declare a shape
    whose bytes its member holds, of a dtype without Python objects.

    Args:
        path: the ``.npz`` file.
        max_ratio: bytes the members may unpack to per byte of archive: 1 for
            archives written with ``np.savez`` (stored members), more for
            ``np.savez_compressed``.

    Raises:
        ValueError: naming the member and what it declares.
        zipfile.BadZipFile: if the file is not a zip archive.
        OSError: if the file cannot be read.
    """
    size = os.path.getsize(path)
    limit = max_ratio * size
    total = 0
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename
            if info.compress_type not in _BOUNDED_COMPRESSION:
                raise ValueError(f"member {name!r} has compression method {info.compress_type} "
                                 "(expected stored or deflated)")
            if info.flag_bits & 0x1:
                raise ValueError(f"member {name!r} is encrypted")
            total += info.file_size
            if info.file_size > limit or total > limit:
                raise ValueError(
                    f"member {name!r} unpacks to {info.file_size} bytes ({total} with the members "
                    f"before it), more than {limit} for a file of {size} bytes"
                )
            with archive.open(info) as member:
                magic = member.read(np.lib.format.MAGIC_LEN)
                if magic[:len(np.lib.format.MAGIC_PREFIX)] != np.lib.format.MAGIC_PREFIX:
                    continue  # np.load returns it as bytes, at most its size
                if len(magic) < np.lib.format.MAGIC_LEN:
                    raise ValueError(f"member {name!r} has a truncated array header")
                shape, dtype = _read_header(member, (magic[-2], magic[-1]))
                available = info.file_size - member.tell()
            if dtype.hasobject or dtype.itemsize == 0:
                raise ValueError(f"member {name!r} holds {dtype}, not numbers")
            declared = math.prod(int(d) for d in shape) * dtype.itemsize
            if declared > available:
                raise ValueError(f"member {name!r} declares shape {shape} of {dtype} "
                                 f"({declared} bytes) in {available} bytes")
