"""A compressed-model file that is really small.

:func:`save_compressed` writes a pruned and codebook-quantized Keras model to a
single file whose size is close to the information content the ANNC size
budget counts: ``b`` bits per nonzero of every compressible kernel, plus the
cheapest encoding of where the nonzeros are, plus tiny codebooks; everything
else (biases, BatchNorm parameters, ...) is stored as raw float32.
:func:`load_compressed` rebuilds the model bit-exactly.

File layout (version 1, all integers little endian)::

    prefix   magic b"SQJLTF" | version <H | flags <H | body length <Q
    body     architecture length <I | zlib(architecture JSON)
             kernel count <I
             per kernel:   ndim <B | dims <I... | bits <B | codebook size <H |
                           nnz <Q | position encoding <B | parameter <B |
                           position bytes <Q
                           codebook (float32) | codes (bits each, packed) |
                           positions
             other-weight count <I
             per weight:   ndim <B | dims <I... | dtype name length <B |
                           dtype name (absent for float32) | raw values
    trailer  CRC32 of prefix + body <I

Kernels are those of :func:`sqjl_tf.layers.compressible_kernels`, in that
order; other weights follow ``model.weights`` order. ``-0.0`` in a kernel is a
zero and loads as ``+0.0``; every other value is restored bit for bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import struct
import tempfile
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
from absl import logging

from sqjl_tf.export import bitpack
from sqjl_tf.export.bitpack import PositionEncoding
from sqjl_tf.layers import compressible_kernels

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "LayerSize",
    "FileSizeBreakdown",
    "save_compressed",
    "load_compressed",
    "file_size_breakdown",
]

MAGIC = b"SQJLTF"
FORMAT_VERSION = 1
_SUPPORTED_FLAGS = 0  # No optional features in version 1.
_PREFIX = struct.Struct("<6sHHQ")
_CHECKSUM = struct.Struct("<I")
_KERNEL_TAIL = struct.Struct("<BHQBBQ")  # bits, codebook size, nnz, encoding, param, pos bytes
_MAX_DISTINCT = 256

PathLike = Union[str, "os.PathLike[str]"]
BitsSpec = Optional[Union[int, Sequence[Optional[int]], Mapping[str, int]]]

_ENCODING_NAMES = {
    PositionEncoding.BITMAP: "bitmap",
    PositionEncoding.GAMMA: "gamma",
    PositionEncoding.RICE: "rice",
    PositionEncoding.FIXED: "fixed",
}


@dataclasses.dataclass(frozen=True)
class LayerSize:
    """Size of one compressed kernel in the file.

    Attributes:
        name: the kernel variable path.
        shape: the kernel shape.
        n: number of weights.
        nnz: number of nonzero weights.
        bits: code width ``b``.
        codebook_size: number of distinct nonzero values stored.
        position_encoding: chosen encoding, e.g. ``"rice(k=5)"``.
        codes_bytes: bytes of the packed codes.
        positions_bytes: bytes of the positions.
        codebook_bytes: bytes of the codebook.
    """

    name: str
    shape: Tuple[int, ...]
    n: int
    nnz: int
    bits: int
    codebook_size: int
    position_encoding: str
    codes_bytes: int
    positions_bytes: int
    codebook_bytes: int

    @property
    def density(self) -> float:
        """Fraction of nonzero weights."""
        return self.nnz / self.n if self.n else 0.0


@dataclasses.dataclass(frozen=True)
class FileSizeBreakdown:
    """Bytes of a compressed-model file, by part and by kernel.

    The parts add up to ``total_bytes``.

    Attributes:
        header_bytes: magic, version, flags, lengths and the zlib-compressed
            architecture.
        metadata_bytes: per-tensor records (shapes, bit widths, encodings,
            lengths).
        codes_bytes: packed codes of all kernels.
        positions_bytes: nonzero positions of all kernels.
        codebooks_bytes: codebooks of all kernels.
        other_weights_bytes: raw values of the non-kernel weights.
        checksum_bytes: the CRC32 trailer.
        total_bytes: size of the file.
        dense_bytes: float32 bytes of every weight (kernels and others).
        layers: one :class:`LayerSize` per kernel.
    """

    header_bytes: int
    metadata_bytes: int
    codes_bytes: int
    positions_bytes: int
    codebooks_bytes: int
    other_weights_bytes: int
    checksum_bytes: int
    total_bytes: int
    dense_bytes: int
    layers: Tuple[LayerSize, ...]

    @property
    def real_rate(self) -> float:
        """Dense float32 bytes of all weights divided by the file size."""
        return self.dense_bytes / self.total_bytes if self.total_bytes else math.inf

    @property
    def paper_rate(self) -> float:
        """``32 * sum(n_l) / sum(b_l * nnz_l)`` over the kernels (the ANNC rate)."""
        den = sum(row.bits * row.nnz for row in self.layers)
        num = 32 * sum(row.n for row in self.layers)
        return num / den if den else math.inf

    def as_dict(self) -> Dict[str, Any]:
        """The breakdown as plain Python values (e.g. for JSON).

        Returns:
            A dict of every field, ``real_rate``, ``paper_rate`` and ``layers``
            as a list of dicts (shapes as lists).
        """
        out = dataclasses.asdict(self)
        out["layers"] = [dataclasses.asdict(row) for row in self.layers]
        for row in out["layers"]:
            row["shape"] = list(row["shape"])
        out["real_rate"] = self.real_rate
        out["paper_rate"] = self.paper_rate
        return out

    def __str__(self) -> str:
        name_w = max([len("kernel")] + [len(r.name) for r in self.layers])
        shape_w = max([len("shape")] + [len(str(r.shape)) for r in self.layers])
        enc_w = max([len("positions as")] + [len(r.position_encoding) for r in self.layers])
        head = (
            f"{'kernel':<{name_w}}  {'shape':<{shape_w}}  {'n':>10}  {'nnz':>9}  "
            f"{'density':>7}  {'bits':>4}  {'positions as':<{enc_w}}  {'codes B':>9}  "
            f"{'pos B':>9}  {'book B':>6}"
        )
        lines = [
            f"Compressed model file: {self.total_bytes:,} bytes "
            f"(real rate {self.real_rate:.1f}x, paper rate {self.paper_rate:.1f}x, "
            f"dense float32 {self.dense_bytes:,} bytes)",
            head,
            "-" * len(head),
        ]
        for r in self.layers:
            lines.append(
                f"{r.name:<{name_w}}  {str(r.shape):<{shape_w}}  {r.n:>10,}  {r.nnz:>9,}  "
                f"{r.density:>7.2%}  {r.bits:>4}  {r.position_encoding:<{enc_w}}  "
                f"{r.codes_bytes:>9,}  {r.positions_bytes:>9,}  {r.codebook_bytes:>6,}"
            )
        lines.append("")
        parts = [
            ("header", self.header_bytes),
            ("metadata", self.metadata_bytes),
            ("codes", self.codes_bytes),
            ("positions", self.positions_bytes),
            ("codebooks", self.codebooks_bytes),
            ("other weights", self.other_weights_bytes),
            ("checksum", self.checksum_bytes),
            ("total", self.total_bytes),
        ]
        for label, nbytes in parts:
            share = nbytes / self.total_bytes if self.total_bytes else 0.0
            lines.append(f"{label:<14}{nbytes:>12,} B  {share:>7.2%}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------
# Saving.
# ---------------------------------------------------------------------------


_MAX_ARCHITECTURE = 64 << 20  # bytes of config JSON a load inflates at most (ResNet-50: ~0.2 MB)


def _architecture_json(model: keras.Model) -> str:
    """The model's Keras config as JSON; ``null`` for a model that cannot be rebuilt from one."""
    from sqjl_tf._copy import uncompiled_copy

    if uncompiled_copy(model) is None:  # e.g. subclassed without get_config
        return "null"
    config = keras.saving.serialize_keras_object(model)
    if isinstance(config, dict):
        # Only the architecture: compiling needs the losses/metrics at load time.
        config = {k: v for k, v in config.items() if k != "compile_config"}
    return json.dumps(config, separators=(",", ":"), sort_keys=True)


def _to_numpy(variable: keras.Variable) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(variable))


def _bits_for_kernels(bits: BitsSpec, names: List[str]) -> List[Optional[int]]:
    if bits is None:
        return [None] * len(names)
    if isinstance(bits, (int, np.integer)):
        return [int(bits)] * len(names)
    if isinstance(bits, Mapping):
        unknown = sorted(set(bits) - set(names))
        if unknown:
            raise ValueError(
                f"Invalid value for argument `bits`. Received: names {unknown} that are "
                f"not compressible kernels of the model. Expected names among {names}."
            )
        return [None if bits.get(n) is None else int(bits[n]) for n in names]
    bits = list(bits)
    if len(bits) != len(names):
        raise ValueError(
            f"Invalid value for argument `bits`. Received: {len(bits)} bit widths. "
            f"Expected one per compressible kernel ({len(names)})."
        )
    return [None if b is None else int(b) for b in bits]


def _dims(shape: Sequence[int]) -> bytes:
    return struct.pack(f"<B{len(shape)}I", len(shape), *[int(d) for d in shape])


def _serialize(model: keras.Model, bits: BitsSpec) -> Tuple[bytes, FileSizeBreakdown]:
    """Encodes ``model``; returns the file bytes and their breakdown."""
    kernels = compressible_kernels(model)
    names = [k.name for k in kernels]
    widths = _bits_for_kernels(bits, names)

    arch = zlib.compress(_architecture_json(model).encode("utf-8"), 9)
    body: List[bytes] = [struct.pack("<I", len(arch)), arch]
    header = _PREFIX.size + 4 + len(arch)
    metadata = codes_total = positions_total = books_total = others_total = 0
    dense_bytes = 0
    rows: List[LayerSize] = []

    body.append(struct.pack("<I", len(kernels)))
    metadata += 4
    for kernel, width in zip(kernels, widths):
        values = _to_numpy(kernel.variable)
        n = int(values.size)
        dense_bytes += 4 * n
        positions, book, codes = bitpack.quantize_to_codes(values)
        if book.size > _MAX_DISTINCT:
            raise ValueError(
                f"Kernel {kernel.name!r} of layer {kernel.layer.name!r} has {book.size} "
                f"distinct nonzero values; a compressed model has at most {_MAX_DISTINCT} "
                "(8 bits) per kernel. Quantize the model before saving it."
            )
        needed = bitpack.bits_for_codebook(book.size)
        b = needed if width is None else width
        if not 1 <= b <= 8 or b < needed:
            raise ValueError(
                f"Invalid bit width {b} for kernel {kernel.name!r} of layer "
                f"{kernel.layer.name!r}: its {book.size} distinct nonzero values need "
                f"{needed} to 8 bits."
            )
        encoding, param, _ = bitpack.choose_position_encoding(positions, n)
        pos_bytes = bitpack.encode_positions(positions, n, encoding, param)
        code_bytes = bitpack.pack_codes(codes, b)
        book_bytes = book.astype("<f4").tobytes()
        record = _dims(values.shape) + _KERNEL_TAIL.pack(
            b, book.size, positions.size, int(encoding), param, len(pos_bytes)
        )
        body += [record, book_bytes, code_bytes, pos_bytes]
        metadata += len(record)
        codes_total += len(code_bytes)
        positions_total += len(pos_bytes)
        books_total += len(book_bytes)
        label = _ENCODING_NAMES[encoding]
        if encoding == PositionEncoding.RICE:
            label += f"(k={param})"
        elif encoding == PositionEncoding.FIXED:
            label += f"(w={param})"
        rows.append(
            LayerSize(
                name=kernel.name,
                shape=tuple(int(d) for d in values.shape),
                n=n,
                nnz=int(positions.size),
                bits=b,
                codebook_size=int(book.size),
                position_encoding=label,
                codes_bytes=len(code_bytes),
                positions_bytes=len(pos_bytes),
                codebook_bytes=len(book_bytes),
            )
        )

    kernel_ids = {id(k.variable) for k in kernels}
    others = [w for w in model.weights if id(w) not in kernel_ids]
    body.append(struct.pack("<I", len(others)))
    metadata += 4
    for weight in others:
        values = _to_numpy(weight)
        dense_bytes += 4 * int(values.size)
        if values.dtype == np.float32:
            dtype_name = b""
            raw = values.astype("<f4").tobytes()
        else:
            dtype_name = values.dtype.name.encode("ascii")
            raw = values.astype(values.dtype.newbyteorder("<")).tobytes()
        record = _dims(values.shape) + struct.pack("<B", len(dtype_name)) + dtype_name
        body += [record, raw]
        metadata += len(record)
        others_total += len(raw)

    body_bytes = b"".join(body)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(body_bytes))
    crc = zlib.crc32(body_bytes, zlib.crc32(prefix)) & 0xFFFFFFFF
    data = prefix + body_bytes + _CHECKSUM.pack(crc)
    breakdown = FileSizeBreakdown(
        header_bytes=header,
        metadata_bytes=metadata,
        codes_bytes=codes_total,
        positions_bytes=positions_total,
        codebooks_bytes=books_total,
        other_weights_bytes=others_total,
        checksum_bytes=_CHECKSUM.size,
        total_bytes=len(data),
        dense_bytes=dense_bytes,
        layers=tuple(rows),
    )
    assert (
        header + metadata + codes_total + positions_total + books_total + others_total
        + _CHECKSUM.size == len(data)
    )
    return data, breakdown


def _write_atomically(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


def file_size_breakdown(model: keras.Model, bits: BitsSpec = None) -> FileSizeBreakdown:
    """Size of the file :func:`save_compressed` would write, without writing it.

    Args:
        model: a built, compressed Keras model.
        bits: optional code widths, as for :func:`save_compressed`.

    Returns:
        The :class:`FileSizeBreakdown`.

    Raises:
        ValueError: as :func:`save_compressed`.

    Example:
        >>> sizes = file_size_breakdown(model)  # doctest: +SKIP
        >>> print(sizes)  # doctest: +SKIP
    """
    return _serialize(model, bits)[1]


def save_compressed(
    model: keras.Model, path: PathLike, bits: BitsSpec = None
) -> FileSizeBreakdown:
    """Saves a pruned, codebook-quantized model to one small file.

    Every compressible kernel (see :func:`sqjl_tf.compressible_kernels`) is
    stored as its codebook of distinct nonzero float32 values, one ``b``-bit
    code per nonzero and the positions of the nonzeros in the smallest of a
    bitmap, Elias-gamma gaps, Golomb-Rice gaps or fixed-width gaps. The
    architecture (Keras config, zlib) and the other weights (raw) complete the
    file, which ends with a CRC32. The file is written to a temporary file in
    the same folder and renamed, so an existing file is never left half
    overwritten.

    Args:
        model: a built Keras model whose every compressible kernel has at most
            256 distinct nonzero values.
        path: destination file.
        bits: optional code width per kernel: an int for all kernels, a list
            with one entry per kernel (``None`` for the default) or a dict
            ``{kernel name: bits}``. The default is the smallest ``b >= 1``
            with ``2**b`` at least the number of distinct nonzero values.

    Returns:
        The :class:`FileSizeBreakdown` of the written file.

    Raises:
        ValueError: if a kernel has more than 256 distinct nonzero values, a
            requested bit width is too small or out of 1..8, or the model is
            not built.
        OSError: if the file cannot be written.

    Example:
        >>> sizes = save_compressed(model, "/tmp/lenet.sqjl")  # doctest: +SKIP
        >>> sizes.real_rate  # doctest: +SKIP
        48.7
    """
    path = os.fspath(path)
    data, breakdown = _serialize(model, bits)
    _write_atomically(path, data)
    logging.info(
        "Saved compressed model to %s: %d bytes (real rate %.1fx, paper rate %.1fx).",
        path,
        breakdown.total_bytes,
        breakdown.real_rate,
        breakdown.paper_rate,
    )
    return breakdown


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads from the file body."""

    def __init__(self, data: bytes, start: int, end: int, path: str):
        self._view = memoryview(data)
        self.pos = start
        self.end = end
        self.path = path

    def error(self, what: str) -> ValueError:
        return ValueError(f"Invalid compressed model file '{self.path}': {what}.")

    def take(self, nbytes: int, what: str) -> bytes:
        if nbytes < 0 or self.pos + nbytes > self.end:
            raise self.error(f"corrupted ({what} runs past the end of the payload)")
        out = self._view[self.pos:self.pos + nbytes].tobytes()
        self.pos += nbytes
        return out

    def unpack(self, fmt: struct.Struct, what: str) -> Tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size, what))

    def dims(self, what: str) -> Tuple[int, ...]:
        (ndim,) = self.unpack(struct.Struct("<B"), what)
        return tuple(self.unpack(struct.Struct(f"<{ndim}I"), what))


def _check_envelope(data: bytes, path: str) -> int:
    """Validates magic, version, length and checksum; returns the body end."""

    def error(what: str) -> ValueError:
        return ValueError(f"Invalid compressed model file '{path}': {what}.")

    if not data:
        raise error("empty file (expected an sqjl_tf compressed model)")
    if data[: len(MAGIC)] != MAGIC[: len(data)]:
        raise error(
            f"not an sqjl_tf compressed model (bad magic bytes {data[:len(MAGIC)]!r}, "
            f"expected {MAGIC!r})"
        )
    if len(data) < _PREFIX.size:
        raise error(
            f"truncated (expected at least {_PREFIX.size + _CHECKSUM.size} bytes, "
            f"found {len(data)})"
        )
    _, version, flags, body_len = _PREFIX.unpack_from(data)
    if version == 0 or version > FORMAT_VERSION:
        raise error(
            f"unsupported format version {version} (this sqjl_tf reads version "
            f"{FORMAT_VERSION}; upgrade sqjl_tf to load it)"
        )
    if flags & ~_SUPPORTED_FLAGS:
        raise error(f"unsupported format flags 0x{flags:04x} for version {version}")
    expected = body_len + _CHECKSUM.size
    found = len(data) - _PREFIX.size
    if found < expected:
        raise error(f"truncated (expected {expected} bytes of payload, found {found})")
    if found > expected:
        raise error(f"{found - expected} unexpected bytes after the checksum")
    end = _PREFIX.size + body_len
    (stored,) = _CHECKSUM.unpack_from(data, end)
    computed = zlib.crc32(memoryview(data)[:end]) & 0xFFFFFFFF
    if stored != computed:
        raise error(
            f"checksum mismatch (stored 0x{stored:08x}, computed 0x{computed:08x}); "
            "the file is corrupted"
        )
    return end


def _resolve_dtype(name: str, reader: _Reader) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        try:
            import ml_dtypes  # pylint: disable=import-outside-toplevel

            return np.dtype(getattr(ml_dtypes, name))
        except (ImportError, AttributeError, TypeError):
            raise reader.error(f"unknown weight dtype {name!r}") from None


def load_compressed(
    path: PathLike,
    custom_objects: Optional[Mapping[str, Any]] = None,
    safe_mode: bool = True,
    model: Optional[keras.Model] = None,
) -> keras.Model:
    """Loads a model written by :func:`save_compressed`.

    The model is rebuilt from its stored Keras config and every weight is set;
    kernels equal the saved ones bit for bit (``-0.0`` reads as ``+0.0``). The
    model is not compiled. A model that could not be rebuilt from a config
    (subclassed, without ``get_config``) is stored without one: its weights
    are then loaded into ``model``, an instance of the same architecture.

    Args:
        path: the compressed model file.
        custom_objects: optional ``{name: class or function}`` for custom
            layers, as for ``keras.saving.deserialize_keras_object``.
        safe_mode: passed to ``keras.saving.deserialize_keras_object``
            (False allows ``Lambda`` layers).
        model: optional built model of the same architecture to load the
            weights into (the stored architecture is then not used); needed
            for a file stored without one.

    Returns:
        The rebuilt ``keras.Model`` (``model`` itself when given).

    Raises:
        ValueError: if the file is foreign (bad magic), of an unsupported
            version, truncated, corrupted (checksum mismatch) or does not
            match its architecture. The message names the path.
        OSError: if the file cannot be read.

    Example:
        >>> model = load_compressed("/tmp/lenet.sqjl")  # doctest: +SKIP
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    end = _check_envelope(data, path)
    reader = _Reader(data, _PREFIX.size, end, path)

    (arch_len,) = reader.unpack(struct.Struct("<I"), "architecture length")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(reader.take(arch_len, "architecture"), _MAX_ARCHITECTURE)
        if inflater.unconsumed_tail:  # a bomb, not a model's config
            raise reader.error(f"its architecture unpacks to over {_MAX_ARCHITECTURE} bytes")
        config = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise reader.error(f"corrupted architecture ({exc})") from None

    if model is None and config is None:
        raise ValueError(
            f"Invalid value for argument `model`. Received: None. Expected a model of the "
            f"architecture of '{path}', which stores none (it was saved from a model without "
            "get_config): pass model=an instance of that architecture, built.")
    if model is None:
        model = keras.saving.deserialize_keras_object(
            config, custom_objects=dict(custom_objects or {}), safe_mode=safe_mode
        )
    if not getattr(model, "built", False) and not model.weights:
        raise reader.error("the stored architecture rebuilds an unbuilt model")
    kernels = compressible_kernels(model)

    (num_kernels,) = reader.unpack(struct.Struct("<I"), "kernel count")
    if num_kernels != len(kernels):
        raise reader.error(
            f"it stores {num_kernels} kernels but its architecture has {len(kernels)}"
        )
    for kernel in kernels:
        what = f"kernel {kernel.name!r}"
        shape = reader.dims(what)
        expected_shape = tuple(int(d) for d in kernel.variable.shape)
        if shape != expected_shape:
            raise reader.error(
                f"{what} has shape {shape} in the file but {expected_shape} in the model"
            )
        n = int(np.prod(shape, dtype=np.int64))
        b, book_size, nnz, encoding, param, pos_len = reader.unpack(_KERNEL_TAIL, what)
        if not 1 <= b <= 8 or book_size > (1 << b) or nnz > n:
            raise reader.error(f"corrupted record for {what}")
        book = np.frombuffer(reader.take(4 * book_size, what), dtype="<f4")
        code_bytes = reader.take((nnz * b + 7) // 8, what)
        pos_bytes = reader.take(pos_len, what)
        try:
            codes = bitpack.unpack_codes(code_bytes, nnz, b)
            positions = bitpack.decode_positions(pos_bytes, encoding, param, n, nnz)
            flat = bitpack.dequantize_codes(positions, book, codes, n)
        except ValueError as exc:
            raise reader.error(f"{what}: {exc}") from None
        kernel.variable.assign(flat.reshape(shape).astype(kernel.variable.dtype))

    kernel_ids = {id(k.variable) for k in kernels}
    others = [w for w in model.weights if id(w) not in kernel_ids]
    (num_others,) = reader.unpack(struct.Struct("<I"), "weight count")
    if num_others != len(others):
        raise reader.error(
            f"it stores {num_others} other weights but its architecture has {len(others)}"
        )
    for weight in others:
        what = f"weight {weight.path!r}"
        shape = reader.dims(what)
        expected_shape = tuple(int(d) for d in weight.shape)
        if shape != expected_shape:
            raise reader.error(
                f"{what} has shape {shape} in the file but {expected_shape} in the model"
            )
        (name_len,) = reader.unpack(struct.Struct("<B"), what)
        name = reader.take(name_len, what).decode("ascii", errors="replace")
        dtype = np.dtype("<f4") if not name else _resolve_dtype(name, reader)
        dtype = dtype.newbyteorder("<")
        count = int(np.prod(shape, dtype=np.int64))
        values = np.frombuffer(reader.take(count * dtype.itemsize, what), dtype=dtype)
        weight.assign(values.reshape(shape))
    if reader.pos != end:
        raise reader.error(f"corrupted ({end - reader.pos} unread bytes in the payload)")
    logging.info("Loaded compressed model from %s (%d bytes).", path, len(data))
    return model
