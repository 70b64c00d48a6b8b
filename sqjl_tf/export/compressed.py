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

Loading trusts nothing the file declares before checking it against the
file's size: the architecture inflates to a bounded size, every entry's bytes
must be present, and the model's variables are allocated only once the file
accounts for each of them (see :func:`load_compressed`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import struct
import zlib
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
from absl import logging

from sqjl_tf._files import write_bytes
from sqjl_tf.export import bitpack
from sqjl_tf.export.bitpack import PositionEncoding
from sqjl_tf.layers import _iter_layers, compressible_kernels

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


def _architecture_json(model: keras.Model) -> str:
    """The model's Keras config as JSON; ``null`` for a model that cannot be rebuilt from one.

    Rebuilt, to be sure, as :func:`_rebuild` will: in a ``keras.StatelessScope`` that
    leaves its variables unallocated, so the check costs no copy of the weights. A
    model whose config fails to rebuild it (a subclassed model without
    ``get_config``), or rebuilds other weights, is stored without one.
    """
    try:
        config = keras.saving.serialize_keras_object(model)
        if isinstance(config, dict):
            # Only the architecture: compiling needs the losses/metrics at load time.
            config = {k: v for k, v in config.items() if k != "compile_config"}
        # The model's own layer classes stand for what a loader passes as custom_objects.
        classes = {type(layer).__name__: type(layer) for layer in _iter_layers(model)}
        with _unallocated():
            sketch = keras.saving.deserialize_keras_object(copy.deepcopy(config),
                                                           custom_objects=classes)
            shapes = [tuple(w.shape) for w in getattr(sketch, "weights", ())]
        if shapes != [tuple(w.shape) for w in model.weights]:
            return "null"
        return json.dumps(config, separators=(",", ":"), sort_keys=True)
    except Exception as err:  # noqa: BLE001 - any failure to rebuild means: no architecture
        logging.info("%s cannot be rebuilt from its config (%s: %s).", model.name,
                     type(err).__name__, str(err).splitlines()[0][:200] if str(err) else "")
        return "null"


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

    arch_json = _architecture_json(model).encode("utf-8")
    if len(arch_json) > _MAX_ARCHITECTURE:
        raise ValueError(
            f"Invalid value for argument `model`. Received: {model.name!r}, whose config takes "
            f"{len(arch_json):,} bytes of JSON. Expected at most {_MAX_ARCHITECTURE:,}, what "
            "load_compressed reads."
        )
    arch = zlib.compress(arch_json, 9)
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
    write_bytes(path, data)
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


# Bounds of what a load allocates, each checked before it is allocated:
_MAX_ARCHITECTURE = 8 << 20  # bytes of config JSON inflated (ResNet-50: ~0.2 MB; parsed, ~20x)
_MAX_LAYERS = 1 << 14  # layer configs in the architecture (the Keras applications: ~1,000 at most)
_MAX_SEQUENTIAL_LAYERS = 512  # of one Sequential: Keras rebuilds it once per layer (quadratic)
_MAX_RATE = 4096  # weight bytes per file byte (real rates: ~35x to ~300x at a 2000x paper rate)
_MIN_WEIGHT_BUDGET = 64 << 20  # weight bytes any file may declare (e.g. all-zero kernels)
_COUNT = struct.Struct("<I")
_BYTE = struct.Struct("<B")


def _path_error(path: str, what: str) -> ValueError:
    """The error of a file that is not a valid compressed model: it names the file."""
    return ValueError(
        f"Invalid value for argument `path`. Received: '{path}': {what}. Expected a compressed "
        "model file written by sqjl_tf.save_compressed."
    )


class _Reader:
    """Bounds-checked reads from the file body."""

    def __init__(self, data: bytes, start: int, end: int, path: str):
        self._view = memoryview(data)
        self.pos = start
        self.end = end
        self.path = path

    def error(self, what: str) -> ValueError:
        return _path_error(self.path, what)

    def take(self, nbytes: int, what: str) -> bytes:
        if nbytes < 0 or self.pos + nbytes > self.end:
            raise self.error(f"corrupted ({what} runs past the end of the payload)")
        out = self._view[self.pos:self.pos + nbytes].tobytes()
        self.pos += nbytes
        return out

    def unpack(self, fmt: struct.Struct, what: str) -> Tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size, what))

    def dims(self, what: str) -> Tuple[int, ...]:
        (ndim,) = self.unpack(_BYTE, what)
        return tuple(self.unpack(struct.Struct(f"<{ndim}I"), what))


@dataclasses.dataclass(frozen=True)
class _KernelRecord:
    """A kernel's entry in the file, read but not decoded.

    Attributes:
        shape: the kernel shape the file declares.
        bits: code width.
        nnz: number of nonzeros.
        encoding: the position encoding (a :class:`PositionEncoding` value).
        param: Rice ``k`` or fixed width ``w``.
        book: the codebook bytes.
        codes: the packed codes.
        positions: the encoded positions.
    """

    shape: Tuple[int, ...]
    bits: int
    nnz: int
    encoding: int
    param: int
    book: bytes
    codes: bytes
    positions: bytes


@dataclasses.dataclass(frozen=True)
class _WeightRecord:
    """A non-kernel weight's entry in the file: its shape, dtype and raw values."""

    shape: Tuple[int, ...]
    dtype: np.dtype
    raw: bytes


def _check_envelope(data: bytes, path: str) -> int:
    """Validates magic, version, length and checksum; returns the body end."""

    def error(what: str) -> ValueError:
        return _path_error(path, what)

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


def _check_layer_counts(config: Any, reader: _Reader) -> None:
    """Refuses an architecture of more layers than Keras rebuilds in bounded time and memory.

    A layer without weights costs no byte of the file but ~10 KB of memory
    and milliseconds to rebuild (a Sequential's, once per layer after it);
    a few hundred bytes of zlib would otherwise take minutes and gigabytes.
    """
    total = 0
    stack = [config]
    while stack:  # no recursion: the config may be deep
        node = stack.pop()
        if isinstance(node, dict):
            inner = node.get("config")
            if isinstance(inner, dict) and isinstance(inner.get("layers"), list):
                count = len(inner["layers"])
                total += count
                if node.get("class_name") == "Sequential" and count > _MAX_SEQUENTIAL_LAYERS:
                    raise reader.error(
                        f"its architecture has a Sequential of {count} layers (at most "
                        f"{_MAX_SEQUENTIAL_LAYERS} are loaded; Keras rebuilds a Sequential "
                        "once per layer)"
                    )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    if total > _MAX_LAYERS:
        raise reader.error(
            f"its architecture has {total} layers (at most {_MAX_LAYERS} are loaded)"
        )


def _read_architecture(reader: _Reader) -> Any:
    """The stored Keras config (None when stored without one), inflated within bounds."""
    (arch_len,) = reader.unpack(_COUNT, "architecture length")
    packed = reader.take(arch_len, "architecture")
    try:
        inflater = zlib.decompressobj()
        text = inflater.decompress(packed, _MAX_ARCHITECTURE)
        if inflater.unconsumed_tail or (len(text) == _MAX_ARCHITECTURE and not inflater.eof):
            # a bomb, not a model's config
            raise reader.error(f"its architecture unpacks to over {_MAX_ARCHITECTURE} bytes")
        config = json.loads(text)
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise reader.error(f"corrupted architecture ({type(exc).__name__}: {exc})") from None
    _check_layer_counts(config, reader)
    return config


def _read_records(reader: _Reader) -> Tuple[List[_KernelRecord], List[_WeightRecord]]:
    """Every kernel and weight entry of the file, checked against the bytes that hold it."""
    valid_encodings = {int(e) for e in PositionEncoding}
    (num_kernels,) = reader.unpack(_COUNT, "kernel count")
    kernels: List[_KernelRecord] = []
    for index in range(num_kernels):
        what = f"kernel #{index}"
        shape = reader.dims(what)
        b, book_size, nnz, encoding, param, pos_len = reader.unpack(_KERNEL_TAIL, what)
        if (
            not 1 <= b <= 8
            or book_size > (1 << b)
            or nnz > math.prod(shape)
            or encoding not in valid_encodings
            or (encoding == PositionEncoding.RICE and param > 63)
            or (encoding == PositionEncoding.FIXED and param > 64)
        ):
            raise reader.error(f"corrupted record for {what}")
        book = reader.take(4 * book_size, what)
        codes = reader.take((nnz * b + 7) // 8, what)
        positions = reader.take(pos_len, what)
        kernels.append(_KernelRecord(shape, b, nnz, encoding, param, book, codes, positions))

    (num_others,) = reader.unpack(_COUNT, "weight count")
    others: List[_WeightRecord] = []
    for index in range(num_others):
        what = f"weight #{index}"
        shape = reader.dims(what)
        (name_len,) = reader.unpack(_BYTE, what)
        name = reader.take(name_len, what).decode("ascii", errors="replace")
        dtype = np.dtype("<f4") if not name else _resolve_dtype(name, reader)
        dtype = dtype.newbyteorder("<")
        if dtype.hasobject or dtype.itemsize == 0:
            raise reader.error(f"{what} has dtype {name!r}, which cannot be stored raw")
        raw = reader.take(math.prod(shape) * dtype.itemsize, what)
        others.append(_WeightRecord(shape, dtype, raw))
    return kernels, others


def _weight_budget(file_size: int) -> int:
    """Bytes of weights a file of ``file_size`` bytes can justify."""
    return max(_MIN_WEIGHT_BUDGET, _MAX_RATE * file_size)


def _check_declared_sizes(
    kernels: Sequence[_KernelRecord], others: Sequence[_WeightRecord], file_size: int,
    reader: _Reader,
) -> None:
    """Refuses a file whose tables declare more weights than its size justifies.

    The other weights are stored raw, so the bytes are there; a kernel's zeros
    cost nothing past its last nonzero, so its size is bounded by a rate: far
    above the real rate of any compressed model, far below an allocation a
    crafted file of a few kilobytes could ask for.
    """
    declared = 4 * sum(math.prod(k.shape) for k in kernels) + sum(len(w.raw) for w in others)
    budget = _weight_budget(file_size)
    if declared > budget:
        raise reader.error(
            f"its {len(kernels)} kernels and {len(others)} other weights take {declared:,} bytes "
            f"as float32, more than a file of {file_size:,} bytes holds (at most {budget:,}: "
            f"{_MAX_RATE}x its size, or {_MIN_WEIGHT_BUDGET:,})"
        )


def _split_weights(model: keras.Model) -> Tuple[List[Any], List[keras.Variable]]:
    """The compressible kernels of ``model`` and its other weights, in file order."""
    kernels = compressible_kernels(model)
    kernel_ids = {id(k.variable) for k in kernels}
    return kernels, [w for w in model.weights if id(w) not in kernel_ids]


def _check_shapes(
    kernels: Sequence[Any],
    others: Sequence[keras.Variable],
    kernel_records: Sequence[_KernelRecord],
    weight_records: Sequence[_WeightRecord],
    reader: _Reader,
) -> None:
    """Every weight of the model is stored in the file, with its shape (and nothing else is)."""
    if len(kernel_records) != len(kernels):
        raise reader.error(
            f"it stores {len(kernel_records)} kernels but its architecture has {len(kernels)}"
        )
    for kernel, record in zip(kernels, kernel_records):
        expected = tuple(int(d) for d in kernel.variable.shape)
        if record.shape != expected:
            raise reader.error(
                f"kernel {kernel.name!r} has shape {record.shape} in the file but {expected} "
                "in the model"
            )
    if len(weight_records) != len(others):
        raise reader.error(
            f"it stores {len(weight_records)} other weights but its architecture has "
            f"{len(others)}"
        )
    for weight, record in zip(others, weight_records):
        expected = tuple(int(d) for d in weight.shape)
        if record.shape != expected:
            raise reader.error(
                f"weight {weight.path!r} has shape {record.shape} in the file but {expected} "
                "in the model"
            )


def _itemsize(dtype: str) -> int:
    """Bytes per element of a Keras dtype name (8 when unknown)."""
    try:
        return np.dtype(dtype).itemsize
    except TypeError:  # e.g. bfloat16, float8_e4m3fn
        digits = "".join(c for c in dtype.split("_")[0] if c.isdigit())
        return max(1, int(digits) // 8) if digits else 8


def _pending_variables() -> List[Any]:
    """Keras's list of variables created in a stateless scope and not yet allocated."""
    from keras.src.backend.common import global_state  # pylint: disable=import-outside-toplevel

    return global_state.get_global_attribute("uninitialized_variables", [], set_to_default=True)


@contextlib.contextmanager
def _unallocated():
    """A ``keras.StatelessScope`` whose variables are never allocated, by it or a later one.

    What is built inside is a sketch: shapes and initializers only, dropped on exit.
    """
    before = len(_pending_variables())
    try:
        with keras.StatelessScope(initialize_variables=False):
            yield
    finally:
        del _pending_variables()[before:]


def _deserialize(
    config: Any, custom_objects: Optional[Mapping[str, Any]], safe_mode: bool, reader: _Reader
) -> keras.Model:
    """A model from (a copy of) ``config``, which Keras consumes; a ValueError if it is none."""
    try:
        model = keras.saving.deserialize_keras_object(
            copy.deepcopy(config), custom_objects=dict(custom_objects or {}), safe_mode=safe_mode
        )
    except (TypeError, KeyError, AttributeError, IndexError, RecursionError) as exc:
        raise reader.error(
            f"its architecture cannot be rebuilt ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(model, keras.layers.Layer):
        raise reader.error(f"its architecture rebuilds a {type(model).__name__}, not a Keras model")
    if not model.built and not model.weights:
        raise reader.error("the stored architecture rebuilds an unbuilt model")
    return model


def _rebuild(
    config: Any,
    kernel_records: Sequence[_KernelRecord],
    weight_records: Sequence[_WeightRecord],
    file_size: int,
    custom_objects: Optional[Mapping[str, Any]],
    safe_mode: bool,
    reader: _Reader,
) -> keras.Model:
    """The model of ``config``, built only once the file accounts for every weight it allocates.

    The architecture is first deserialized in a ``keras.StatelessScope`` that
    leaves its variables unallocated (a shape and an initializer each), so one
    that declares a huge layer costs nothing until it is checked against the
    file: every weight must have its entry, of the same shape, and all of them
    must fit :func:`_weight_budget`. That sketch is then dropped, its
    variables never allocated, and the architecture deserialized as Keras
    does (the same variables, names included).
    """
    with _unallocated():
        try:
            sketch = _deserialize(config, custom_objects, safe_mode, reader)
        except ValueError as exc:
            if "stateless scope" not in str(exc):
                raise
            raise reader.error(
                "its architecture has a layer that makes a variable from a value rather "
                "than an initializer, so its size cannot be checked before it is allocated "
                "(pass model=an instance of the architecture, built)"
            ) from exc
        _check_shapes(*_split_weights(sketch), kernel_records, weight_records, reader)
        allocated = sum(
            math.prod(int(d) for d in w.shape) * _itemsize(w.dtype) for w in sketch.weights
        )
        if allocated > _weight_budget(file_size):
            raise reader.error(
                f"its model's weights take {allocated:,} bytes, more than a file of "
                f"{file_size:,} bytes holds (at most {_weight_budget(file_size):,})"
            )
    model = _deserialize(config, custom_objects, safe_mode, reader)
    _check_shapes(*_split_weights(model), kernel_records, weight_records, reader)
    return model


def _decode_kernel(record: _KernelRecord, what: str, reader: _Reader) -> np.ndarray:
    """A kernel's float32 values, in its shape."""
    n = math.prod(record.shape)
    book = np.frombuffer(record.book, dtype="<f4")
    try:
        codes = bitpack.unpack_codes(record.codes, record.nnz, record.bits)
        positions = bitpack.decode_positions(
            record.positions, record.encoding, record.param, n, record.nnz
        )
        flat = bitpack.dequantize_codes(positions, book, codes, n)
    except ValueError as exc:
        raise reader.error(f"{what}: {exc}") from None
    return flat.reshape(record.shape)


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

    Nothing a file declares is allocated before it is checked against the
    file: the architecture inflates to 8 MiB at most, every entry's bytes must
    be in the file, and the model's variables are allocated only once each
    weight of the architecture has its entry of the same shape and all of them
    take at most 4096 times the file's size (or 64 MiB).

    Args:
        path: the compressed model file.
        custom_objects: optional ``{name: class or function}`` for custom
            layers, as for ``keras.saving.deserialize_keras_object``.
        safe_mode: passed to ``keras.saving.deserialize_keras_object``
            (False allows ``Lambda`` layers).
        model: optional built model of the same architecture to load the
            weights into (the stored architecture is then not used); needed
            for a file stored without one, or whose layers make variables
            from values rather than initializers.

    Returns:
        The rebuilt ``keras.Model`` (``model`` itself when given).

    Raises:
        ValueError: if the file is foreign (bad magic), of an unsupported
            version, truncated, corrupted (checksum mismatch), declares more
            than its size justifies (an architecture bomb, weights larger
            than the file can hold) or does not match its architecture. The
            message names the path.
        OSError: if the file cannot be read.

    Example:
        >>> model = load_compressed("/tmp/lenet.sqjl")  # doctest: +SKIP
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    end = _check_envelope(data, path)
    reader = _Reader(data, _PREFIX.size, end, path)
    config = _read_architecture(reader)
    kernel_records, weight_records = _read_records(reader)
    if reader.pos != end:
        raise reader.error(f"corrupted ({end - reader.pos} unread bytes in the payload)")

    if model is None and config is None:
        raise ValueError(
            f"Invalid value for argument `model`. Received: None. Expected a model of the "
            f"architecture of '{path}', which stores none (it was saved from a model without "
            "get_config): pass model=an instance of that architecture, built.")
    if model is None:
        _check_declared_sizes(kernel_records, weight_records, len(data), reader)
        model = _rebuild(config, kernel_records, weight_records, len(data), custom_objects,
                         safe_mode, reader)
        kernels, others = _split_weights(model)
    else:
        kernels, others = _split_weights(model)
        _check_shapes(kernels, others, kernel_records, weight_records, reader)

    for kernel, record in zip(kernels, kernel_records):
        values = _decode_kernel(record, f"kernel {kernel.name!r}", reader)
        kernel.variable.assign(values.astype(kernel.variable.dtype, copy=False))
    for weight, record in zip(others, weight_records):
        weight.assign(np.frombuffer(record.raw, dtype=record.dtype).reshape(record.shape))
    logging.info("Loaded compressed model from %s (%d bytes).", path, len(data))
    return model
