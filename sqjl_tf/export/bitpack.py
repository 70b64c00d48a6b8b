"""Vectorised numpy bit-level encoders for compressed kernels.

Everything here works on whole arrays at once (``np.packbits`` /
``np.unpackbits`` over bit matrices, ``cumsum`` / ``flatnonzero`` for unary
codes); there is no Python loop over weights, so kernels with millions of
weights encode and decode in well under a second.

Bit order is MSB-first everywhere (``np.packbits`` default): the first bit of a
stream is the most significant bit of its first byte, and a ``w``-bit field
stores its most significant bit first. Streams are padded with zero bits to a
whole number of bytes.

Nonzero *positions* (flat, C-order indices of the nonzeros of a kernel with
``n`` weights) can be stored in four ways, see :class:`PositionEncoding`. The
gap of a nonzero is the number of zeros right before it (``positions[0]`` for
the first one), so gaps are ``>= 0`` and sum to at most ``n``.

The variable-length codes (Elias-gamma and Golomb-Rice) are stored with their
two parts in separate runs of the same bit stream -- all unary parts first,
then all fixed/binary parts -- which costs exactly the same number of bits as
interleaving them and lets both be decoded without a sequential scan.
"""

from __future__ import annotations

import enum
import math
from typing import Dict, Tuple

import numpy as np

__all__ = [
    "PositionEncoding",
    "pack_fixed",
    "unpack_fixed",
    "pack_codes",
    "unpack_codes",
    "bit_length",
    "gaps_from_positions",
    "positions_from_gaps",
    "encode_bitmap",
    "decode_bitmap",
    "encode_elias_gamma",
    "decode_elias_gamma",
    "encode_rice",
    "decode_rice",
    "rice_parameter",
    "position_encoding_sizes",
    "choose_position_encoding",
    "encode_positions",
    "decode_positions",
    "quantize_to_codes",
    "dequantize_codes",
    "bits_for_codebook",
]


class PositionEncoding(enum.IntEnum):
    """How the positions of the nonzeros of a kernel are stored.

    Attributes:
        BITMAP: one bit per weight (``n`` bits).
        GAMMA: Elias-gamma code of ``gap + 1`` for every nonzero.
        RICE: Golomb-Rice code of every gap with parameter ``k`` (unary
            quotient ``gap >> k`` then ``k`` remainder bits).
        FIXED: every gap as a ``w``-bit unsigned integer, ``w`` the bit length
            of the largest gap (0 bits when the kernel is dense).
    """

    BITMAP = 0
    GAMMA = 1
    RICE = 2
    FIXED = 3


def _to_bytes(bits: np.ndarray) -> bytes:
    """Packs a 0/1 uint8 bit array into bytes (MSB first, zero padded)."""
    return np.packbits(bits).tobytes()


def _bits_of(data: bytes, nbits: int, what: str) -> np.ndarray:
    """Unpacks the first ``nbits`` bits of ``data`` as a uint8 0/1 array."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size * 8 < nbits:
        raise ValueError(
            f"Corrupted {what}: expected at least {nbits} bits, found {buf.size * 8}."
        )
    return np.unpackbits(buf, count=nbits)


def bit_length(values: np.ndarray) -> np.ndarray:
    """Vectorised ``int.bit_length`` of non-negative integers below 2**53.

    Args:
        values: array of non-negative integers.

    Returns:
        int64 array of the same shape; ``bit_length(0) == 0``.

    Example:
        >>> bit_length(np.array([0, 1, 2, 3, 4, 255, 256])).tolist()
        [0, 1, 2, 2, 3, 8, 9]
    """
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    # frexp is exact for integers < 2**53: x = m * 2**e with m in [0.5, 1).
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


# ---------------------------------------------------------------------------
# Fixed-width fields.
# ---------------------------------------------------------------------------


def _fixed_bit_matrix(values: np.ndarray, width: int) -> np.ndarray:
    """(count, width) uint8 matrix of the low ``width`` bits, MSB first."""
    values = np.ascontiguousarray(values, dtype=np.uint64).reshape(-1)
    nbytes = (width + 7) // 8
    as_bytes = values.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - nbytes:]
    bits = np.unpackbits(as_bytes, axis=1)
    return bits[:, bits.shape[1] - width:]


def _fixed_from_bit_matrix(bits: np.ndarray, width: int) -> np.ndarray:
    """Inverse of :func:`_fixed_bit_matrix`; returns uint64 values."""
    count = bits.shape[0]
    nbytes = (width + 7) // 8
    padded = np.zeros((count, 8 * nbytes), dtype=np.uint8)
    padded[:, 8 * nbytes - width:] = bits
    packed = np.packbits(padded, axis=1)
    full = np.zeros((count, 8), dtype=np.uint8)
    full[:, 8 - nbytes:] = packed
    return full.view(">u8").reshape(-1).astype(np.uint64)


def pack_fixed(values: np.ndarray, width: int) -> bytes:
    """Packs non-negative integers as consecutive ``width``-bit fields.

    Args:
        values: 1-D array of integers in ``[0, 2**width)``.
        width: bits per value, 0 to 64 (0 gives an empty stream).

    Returns:
        ``ceil(len(values) * width / 8)`` bytes.

    Raises:
        ValueError: if ``width`` is out of range or a value does not fit.

    Example:
        >>> pack_fixed(np.array([1, 2, 3]), 2)
        b'l'
    """
    values = np.asarray(values).reshape(-1)
    if not 0 <= width <= 64:
        raise ValueError(f"Invalid bit width {width}: expected 0 to 64.")
    if values.size and (values.min() < 0 or (width < 64 and int(values.max()) >> width)):
        raise ValueError(f"Invalid values: some do not fit in {width} unsigned bits.")
    if width == 0 or values.size == 0:
        return b""
    return _to_bytes(_fixed_bit_matrix(values, width).reshape(-1))


def unpack_fixed(data: bytes, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_fixed`.

    Args:
        data: the packed bytes.
        count: number of values to read.
        width: bits per value, 0 to 64.

    Returns:
        uint64 array of ``count`` values.

    Raises:
        ValueError: if ``data`` is too short.

    Example:
        >>> unpack_fixed(b'l', 3, 2).tolist()
        [1, 2, 3]
    """
    if width == 0 or count == 0:
        return np.zeros(count, dtype=np.uint64)
    bits = _bits_of(data, count * width, f"{width}-bit fields").reshape(count, width)
    return _fixed_from_bit_matrix(bits, width)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Packs codebook indices at ``bits`` (1..8) bits each.

    Args:
        codes: 1-D integer array of indices in ``[0, 2**bits)``.
        bits: code width, 1 to 8.

    Returns:
        ``ceil(len(codes) * bits / 8)`` bytes.

    Raises:
        ValueError: if ``bits`` is not in 1..8 or a code does not fit.

    Example:
        >>> unpack_codes(pack_codes(np.array([5, 0, 7]), 3), 3, 3).tolist()
        [5, 0, 7]
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"Invalid code width {bits}: expected 1 to 8 bits.")
    codes = np.asarray(codes).reshape(-1)
    if codes.size and (codes.min() < 0 or codes.max() >= (1 << bits)):
        raise ValueError(f"Invalid codes: some do not fit in {bits} bits.")
    if codes.size == 0:
        return b""
    matrix = np.unpackbits(codes.astype(np.uint8)[:, None], axis=1)[:, 8 - bits:]
    return _to_bytes(matrix.reshape(-1))


def unpack_codes(data: bytes, count: int, bits: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`; returns ``count`` uint8 codes.

    Args:
        data: the packed bytes.
        count: number of codes.
        bits: code width, 1 to 8.

    Returns:
        uint8 array of ``count`` codes.

    Raises:
        ValueError: if ``data`` is too short.
    """
    if count == 0:
        return np.zeros(0, dtype=np.uint8)
    matrix = _bits_of(data, count * bits, f"{bits}-bit codes").reshape(count, bits)
    padded = np.zeros((count, 8), dtype=np.uint8)
    padded[:, 8 - bits:] = matrix
    return np.packbits(padded, axis=1).reshape(-1)


# ---------------------------------------------------------------------------
# Gaps, unary runs, variable-width binary fields.
# ---------------------------------------------------------------------------


def gaps_from_positions(positions: np.ndarray) -> np.ndarray:
    """Number of zeros before each nonzero, from sorted flat positions.

    Args:
        positions: sorted, distinct flat indices of the nonzeros.

    Returns:
        int64 gaps, all ``>= 0``.

    Example:
        >>> gaps_from_positions(np.array([2, 3, 7])).tolist()
        [2, 0, 3]
    """
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    return np.diff(positions, prepend=np.int64(-1)) - 1


def positions_from_gaps(gaps: np.ndarray) -> np.ndarray:
    """Inverse of :func:`gaps_from_positions`.

    Args:
        gaps: non-negative gaps.

    Returns:
        int64 sorted flat positions.

    Example:
        >>> positions_from_gaps(np.array([2, 0, 3])).tolist()
        [2, 3, 7]
    """
    gaps = np.asarray(gaps, dtype=np.int64).reshape(-1)
    return np.cumsum(gaps + 1) - 1


def _unary_bits(q: np.ndarray) -> np.ndarray:
    """Unary code of each ``q``: ``q`` zero bits then a one bit."""
    q = np.asarray(q, dtype=np.int64)
    ends = np.cumsum(q + 1) - 1
    bits = np.zeros(int(ends[-1]) + 1 if q.size else 0, dtype=np.uint8)
    bits[ends] = 1
    return bits


def _read_unary(bits: np.ndarray, count: int, what: str) -> Tuple[np.ndarray, int]:
    """Reads ``count`` unary codes from the start of ``bits``.

    Returns:
        The decoded values and the number of bits they used.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    ones = np.flatnonzero(bits)
    if ones.size < count:
        raise ValueError(f"Corrupted {what}: expected {count} unary codes, found {ones.size}.")
    ends = ones[:count].astype(np.int64)
    return np.diff(ends, prepend=np.int64(-1)) - 1, int(ends[-1]) + 1


def _varwidth_bits(values: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenates the low ``widths[i]`` bits of each value, MSB first."""
    total = int(widths.sum())
    out = np.zeros(total, dtype=np.uint8)
    if total == 0:
        return out
    starts = np.cumsum(widths) - widths
    values = values.astype(np.uint64)
    # One vectorised pass per bit plane (at most 63 passes, never per weight).
    for t in range(int(widths.max())):
        sel = widths > t
        shift = (widths[sel] - 1 - t).astype(np.uint64)
        out[starts[sel] + t] = ((values[sel] >> shift) & np.uint64(1)).astype(np.uint8)
    return out


def _read_varwidth(bits: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_varwidth_bits`; returns uint64 values."""
    values = np.zeros(widths.shape, dtype=np.uint64)
    if widths.size == 0 or int(widths.max()) == 0:
        return values
    starts = np.cumsum(widths) - widths
    for t in range(int(widths.max())):
        sel = widths > t
        shift = (widths[sel] - 1 - t).astype(np.uint64)
        values[sel] |= bits[starts[sel] + t].astype(np.uint64) << shift
    return values


# ---------------------------------------------------------------------------
# Position encoders.
# ---------------------------------------------------------------------------


def encode_bitmap(positions: np.ndarray, n: int) -> bytes:
    """Bitmap of ``n`` bits with ones at ``positions``.

    Args:
        positions: flat indices in ``[0, n)``.
        n: number of weights.

    Returns:
        ``ceil(n / 8)`` bytes.

    Example:
        >>> encode_bitmap(np.array([0, 9]), 10)
        b'\\x80@'
    """
    mask = np.zeros(n, dtype=np.uint8)
    mask[np.asarray(positions, dtype=np.int64)] = 1
    return _to_bytes(mask)


def decode_bitmap(data: bytes, n: int) -> np.ndarray:
    """Positions of the ones of an ``n``-bit bitmap.

    Args:
        data: the bitmap bytes.
        n: number of weights.

    Returns:
        Sorted int64 positions.

    Raises:
        ValueError: if ``data`` holds fewer than ``n`` bits.

    Example:
        >>> decode_bitmap(b'\\x80@', 10).tolist()
        [0, 9]
    """
    return np.flatnonzero(_bits_of(data, n, "position bitmap")).astype(np.int64)


def encode_elias_gamma(values: np.ndarray) -> bytes:
    """Elias-gamma codes of integers ``>= 1`` (unary lengths, then mantissas).

    The code of ``x`` is ``N = floor(log2 x)`` in unary (``N`` zeros then a
    one) followed by the ``N`` low bits of ``x``: ``2 N + 1`` bits in all. The
    unary parts of all values come first, then all the low-bit parts.

    Args:
        values: 1-D array of integers ``>= 1``.

    Returns:
        The packed bytes.

    Raises:
        ValueError: if a value is below 1.

    Example:
        >>> decode_elias_gamma(encode_elias_gamma(np.array([1, 5, 2])), 3).tolist()
        [1, 5, 2]
    """
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size == 0:
        return b""
    if values.min() < 1:
        raise ValueError("Invalid values for Elias-gamma: all must be >= 1.")
    widths = bit_length(values) - 1
    return _to_bytes(np.concatenate([_unary_bits(widths), _varwidth_bits(values, widths)]))


def decode_elias_gamma(data: bytes, count: int) -> np.ndarray:
    """Inverse of :func:`encode_elias_gamma`.

    Args:
        data: the encoded bytes.
        count: number of values.

    Returns:
        int64 values ``>= 1``.

    Raises:
        ValueError: if the stream is too short.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    widths, used = _read_unary(bits, count, "Elias-gamma positions")
    if used + int(widths.sum()) > bits.size:
        raise ValueError("Corrupted Elias-gamma positions: stream too short.")
    low = _read_varwidth(bits[used:], widths)
    return (low | (np.uint64(1) << widths.astype(np.uint64))).astype(np.int64)


def encode_rice(values: np.ndarray, k: int) -> bytes:
    """Golomb-Rice codes of integers ``>= 0`` with parameter ``k``.

    The code of ``x`` is ``x >> k`` in unary then the ``k`` low bits of ``x``.
    All unary parts come first, then all ``k``-bit remainders.

    Args:
        values: 1-D array of integers ``>= 0``.
        k: Rice parameter, 0 to 63.

    Returns:
        The packed bytes.

    Example:
        >>> decode_rice(encode_rice(np.array([0, 9, 4]), 2), 3, 2).tolist()
        [0, 9, 4]
    """
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size == 0:
        return b""
    if values.min() < 0:
        raise ValueError("Invalid values for Rice coding: all must be >= 0.")
    q = values >> k
    parts = [_unary_bits(q)]
    if k:
        parts.append(_fixed_bit_matrix(values & ((1 << k) - 1), k).reshape(-1))
    return _to_bytes(np.concatenate(parts))


def decode_rice(data: bytes, count: int, k: int) -> np.ndarray:
    """Inverse of :func:`encode_rice`.

    Args:
        data: the encoded bytes.
        count: number of values.
        k: Rice parameter used to encode.

    Returns:
        int64 values ``>= 0``.

    Raises:
        ValueError: if the stream is too short.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    q, used = _read_unary(bits, count, "Rice positions")
    if not k:
        return q
    if used + count * k > bits.size:
        raise ValueError("Corrupted Rice positions: stream too short.")
    rem = bits[used:used + count * k].reshape(count, k)
    return (q << k) | _fixed_from_bit_matrix(rem, k).astype(np.int64)


def rice_parameter(gaps: np.ndarray) -> int:
    """Rice parameter from the mean gap: ``k = max(0, floor(log2(mean)))``.

    For geometrically distributed gaps (random pruning) this is within one of
    the optimal parameter; :func:`position_encoding_sizes` also measures
    ``k - 1`` and ``k + 1``.

    Args:
        gaps: non-negative gaps.

    Returns:
        The parameter ``k >= 0`` (0 when there are no gaps).

    Example:
        >>> rice_parameter(np.array([40, 60, 50]))
        5
    """
    gaps = np.asarray(gaps)
    if gaps.size == 0:
        return 0
    mean = float(gaps.mean())
    return max(0, int(math.floor(math.log2(mean)))) if mean >= 1 else 0


def _nbytes(nbits: int) -> int:
    return (int(nbits) + 7) // 8


def position_encoding_sizes(
    positions: np.ndarray, n: int
) -> Dict[Tuple[PositionEncoding, int], int]:
    """Measured size in bytes of every candidate position encoding.

    Sizes are computed from the code lengths (no stream is built).

    Args:
        positions: sorted flat indices of the nonzeros.
        n: number of weights in the kernel.

    Returns:
        ``{(encoding, parameter): nbytes}``; the parameter is the Rice ``k``
        or the fixed width ``w`` (0 for the bitmap and Elias-gamma).

    Example:
        >>> sizes = position_encoding_sizes(np.array([3, 50]), 100)
        >>> sizes[(PositionEncoding.BITMAP, 0)]
        13
    """
    gaps = gaps_from_positions(positions)
    count = gaps.size
    sizes = {(PositionEncoding.BITMAP, 0): _nbytes(n)}
    if count == 0:
        sizes[(PositionEncoding.FIXED, 0)] = 0
        return sizes
    gamma_bits = int((2 * (bit_length(gaps + 1) - 1) + 1).sum())
    sizes[(PositionEncoding.GAMMA, 0)] = _nbytes(gamma_bits)
    k0 = rice_parameter(gaps)
    for k in range(max(0, k0 - 1), k0 + 2):
        sizes[(PositionEncoding.RICE, k)] = _nbytes(int((gaps >> k).sum()) + count * (k + 1))
    width = int(bit_length(gaps.max()))
    sizes[(PositionEncoding.FIXED, width)] = _nbytes(count * width)
    return sizes


def choose_position_encoding(positions: np.ndarray, n: int) -> Tuple[PositionEncoding, int, int]:
    """The smallest position encoding by measured size.

    Ties go to the simplest encoding (fixed, bitmap, Rice, then gamma).

    Args:
        positions: sorted flat indices of the nonzeros.
        n: number of weights in the kernel.

    Returns:
        ``(encoding, parameter, nbytes)``.
    """
    preference = {
        PositionEncoding.FIXED: 0,
        PositionEncoding.BITMAP: 1,
        PositionEncoding.RICE: 2,
        PositionEncoding.GAMMA: 3,
    }
    sizes = position_encoding_sizes(positions, n)
    (enc, param), size = min(sizes.items(), key=lambda kv: (kv[1], preference[kv[0][0]], kv[0][1]))
    return enc, param, size


def encode_positions(
    positions: np.ndarray, n: int, encoding: PositionEncoding, param: int = 0
) -> bytes:
    """Encodes sorted flat nonzero positions with the given encoding.

    Args:
        positions: sorted, distinct flat indices in ``[0, n)``.
        n: number of weights in the kernel.
        encoding: a :class:`PositionEncoding`.
        param: Rice ``k`` or fixed width ``w`` (ignored otherwise).

    Returns:
        The encoded bytes.

    Raises:
        ValueError: on an unknown encoding or a fixed width that is too small.

    Example:
        >>> pos = np.array([1, 4, 5])
        >>> data = encode_positions(pos, 8, PositionEncoding.RICE, 1)
        >>> decode_positions(data, PositionEncoding.RICE, 1, 8, 3).tolist()
        [1, 4, 5]
    """
    encoding = PositionEncoding(encoding)
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if encoding == PositionEncoding.BITMAP:
        return encode_bitmap(positions, n)
    gaps = gaps_from_positions(positions)
    if encoding == PositionEncoding.GAMMA:
        return encode_elias_gamma(gaps + 1)
    if encoding == PositionEncoding.RICE:
        return encode_rice(gaps, param)
    return pack_fixed(gaps, param)


def decode_positions(
    data: bytes, encoding: PositionEncoding, param: int, n: int, count: int
) -> np.ndarray:
    """Inverse of :func:`encode_positions`.

    Args:
        data: the encoded bytes.
        encoding: the :class:`PositionEncoding` used.
        param: Rice ``k`` or fixed width ``w``.
        n: number of weights in the kernel.
        count: number of nonzeros.

    Returns:
        Sorted int64 flat positions.

    Raises:
        ValueError: if the data is corrupted (wrong count, out of range).
    """
    try:
        encoding = PositionEncoding(encoding)
    except ValueError:
        raise ValueError(f"Corrupted positions: unknown position encoding {encoding}.") from None
    if encoding == PositionEncoding.BITMAP:
        positions = decode_bitmap(data, n)
        if positions.size != count:
            raise ValueError(
                f"Corrupted position bitmap: expected {count} nonzeros, found {positions.size}."
            )
        return positions
    if encoding == PositionEncoding.GAMMA:
        gaps = decode_elias_gamma(data, count) - 1
    elif encoding == PositionEncoding.RICE:
        gaps = decode_rice(data, count, param)
    else:
        gaps = unpack_fixed(data, count, param).astype(np.int64)
    positions = positions_from_gaps(gaps)
    if positions.size and (positions[-1] >= n or gaps.min() < 0):
        raise ValueError(f"Corrupted positions: a nonzero lies outside the {n} weights.")
    return positions


# ---------------------------------------------------------------------------
# Kernel values.
# ---------------------------------------------------------------------------


def bits_for_codebook(size: int) -> int:
    """Smallest ``b >= 1`` with ``2**b >= size``.

    Args:
        size: number of codebook entries.

    Returns:
        The code width in bits.

    Example:
        >>> [bits_for_codebook(k) for k in (0, 1, 2, 3, 8, 9, 256)]
        [1, 1, 1, 2, 3, 4, 8]
    """
    return max(1, int(size - 1).bit_length()) if size > 1 else 1


def quantize_to_codes(values: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splits a float32 array into nonzero positions, codebook and codes.

    Zeros (``+0.0`` and ``-0.0``) are not stored; every other value is looked
    up by its exact float32 bit pattern, so the decoding is bit-exact (NaN
    payloads included) except that ``-0.0`` decodes as ``+0.0``.

    Args:
        values: float array (any shape), cast to float32.

    Returns:
        ``(positions, codebook, codes)``: int64 sorted flat positions of the
        nonzeros, the float32 distinct nonzero values (sorted by bit pattern)
        and the uint16 index of each nonzero in the codebook.

    Example:
        >>> pos, book, codes = quantize_to_codes(np.array([0., 2., 0., -1., 2.]))
        >>> pos.tolist(), book.tolist(), codes.tolist()
        ([1, 3, 4], [2.0, -1.0], [0, 1, 0])
    """
    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    positions = np.flatnonzero(flat != 0).astype(np.int64)
    patterns = flat.view(np.uint32)[positions]
    book, codes = np.unique(patterns, return_inverse=True)
    return positions, book.view(np.float32), codes.reshape(-1).astype(np.uint16)


def dequantize_codes(
    positions: np.ndarray, codebook: np.ndarray, codes: np.ndarray, n: int
) -> np.ndarray:
    """Inverse of :func:`quantize_to_codes`.

    Args:
        positions: flat positions of the nonzeros.
        codebook: float32 codebook.
        codes: index of each nonzero in the codebook.
        n: number of weights.

    Returns:
        Flat float32 array of ``n`` values.

    Raises:
        ValueError: if a code is outside the codebook.
    """
    out = np.zeros(n, dtype=np.uint32)
    if codes.size:
        if int(codes.max()) >= codebook.size:
            raise ValueError(
                f"Corrupted codes: index {int(codes.max())} outside a codebook of "
                f"{codebook.size} values."
            )
        out[positions] = np.ascontiguousarray(codebook, dtype=np.float32).view(np.uint32)[codes]
    return out.view(np.float32)
