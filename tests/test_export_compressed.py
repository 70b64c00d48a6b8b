"""Tests of the compressed-model file format (sqjl_tf.export)."""

from __future__ import annotations

import os
import struct
import time

import keras
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sqjl_tf.export import (
    FileSizeBreakdown,
    file_size_breakdown,
    load_compressed,
    save_compressed,
)
from sqjl_tf.export import bitpack
from sqjl_tf.export.bitpack import PositionEncoding
from sqjl_tf.layers import compressible_kernels


# ---------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------


def _sparsify_and_quantize(model, density=0.02, levels=8, seed=0):
    """Keeps the ``density`` largest weights of each kernel, snapped to ``levels`` values."""
    rng = np.random.default_rng(seed)
    for kernel in compressible_kernels(model):
        flat = np.asarray(kernel.variable).reshape(-1).astype(np.float32)
        keep = max(1, int(round(density * flat.size)))
        idx = np.argsort(-np.abs(flat), kind="stable")[:keep]
        scale = float(np.abs(flat[idx]).mean()) or 1.0
        book = (rng.uniform(0.2, 2.0, size=levels) * rng.choice([-1, 1], size=levels) * scale)
        book = book.astype(np.float32)
        out = np.zeros_like(flat)
        # Random assignment: every level is used (with high probability).
        out[idx] = book[rng.integers(0, levels, size=keep)]
        kernel.variable.assign(out.reshape(kernel.variable.shape))
    return model


def _randomize_non_kernels(model, seed=1):
    """Gives biases and BatchNorm statistics non-trivial values."""
    rng = np.random.default_rng(seed)
    kernel_ids = {id(k.variable) for k in compressible_kernels(model)}
    for w in model.weights:
        if id(w) in kernel_ids:
            continue
        values = rng.normal(size=w.shape).astype(np.float32)
        if "variance" in w.path:
            values = np.abs(values) + 0.5
        w.assign(values)


def _assert_bit_exact(saved, loaded, x):
    assert len(saved.weights) == len(loaded.weights)
    for a, b in zip(saved.weights, loaded.weights):
        a_np = np.asarray(a, dtype=np.float32)
        b_np = np.asarray(b, dtype=np.float32)
        assert a_np.shape == b_np.shape, a.path
        np.testing.assert_array_equal(a_np.view(np.uint32), b_np.view(np.uint32), err_msg=a.path)
    pa = np.asarray(saved(x, training=False))
    pb = np.asarray(loaded(x, training=False))
    assert np.array_equal(pa, pb)


def _lenet():
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(20, 5, name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(50, 5, name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(500, activation="relu", name="fc1"),
            keras.layers.Dense(10, name="fc2"),
        ],
        name="lenet",
    )


@pytest.fixture(scope="module")
def lenet():
    keras.utils.set_random_seed(0)
    model = _sparsify_and_quantize(_lenet(), density=0.02, levels=8)
    _randomize_non_kernels(model)
    return model


@pytest.fixture(scope="module")
def lenet_file(lenet, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("lenet") / "lenet.sqjl")
    breakdown = save_compressed(lenet, path)
    return path, breakdown


# ---------------------------------------------------------------------------
# Round trips.
# ---------------------------------------------------------------------------


def test_lenet_round_trip_bit_exact(lenet, lenet_file):
    path, breakdown = lenet_file
    loaded = load_compressed(path)
    x = np.random.default_rng(3).normal(size=(8, 28, 28, 1)).astype(np.float32)
    _assert_bit_exact(lenet, loaded, x)
    assert breakdown.total_bytes == os.path.getsize(path)
    assert [row.bits for row in breakdown.layers] == [3, 3, 3, 3]
    assert [row.nnz for row in breakdown.layers] == [10, 500, 8000, 100]
    # Much smaller than the float32 weights (1.7 MB).
    assert breakdown.real_rate > 100


def test_batchnorm_depthwise_separable_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(8, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2),
            keras.layers.BatchNormalization(),
            keras.layers.SeparableConv2D(16, 3),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(10),
        ]
    )
    _sparsify_and_quantize(model, density=0.3, levels=5)
    _randomize_non_kernels(model)
    names = [k.name for k in compressible_kernels(model)]
    assert len(names) == 5  # conv, depthwise, separable depthwise + pointwise, dense
    path = tmp_path / "bn.sqjl"
    breakdown = save_compressed(model, path)
    assert [row.bits for row in breakdown.layers] == [3] * 5
    loaded = load_compressed(path)
    x = np.random.default_rng(4).normal(size=(4, 16, 16, 3)).astype(np.float32)
    _assert_bit_exact(model, loaded, x)


def test_functional_residual_round_trip(tmp_path):
    keras.utils.set_random_seed(2)
    inputs = keras.Input((32,))
    h = keras.layers.Dense(32, activation="relu")(inputs)
    h = keras.layers.Dense(32)(h)
    h = keras.layers.Add()([inputs, h])
    outputs = keras.layers.Dense(5)(keras.layers.Activation("relu")(h))
    model = keras.Model(inputs, outputs)
    _sparsify_and_quantize(model, density=0.1, levels=2)
    _randomize_non_kernels(model)
    path = tmp_path / "res.sqjl"
    breakdown = save_compressed(model, path, bits=[1, 4, None])
    assert [row.bits for row in breakdown.layers] == [4 if i == 1 else 1 for i in range(3)]
    loaded = load_compressed(path)
    x = np.random.default_rng(5).normal(size=(16, 32)).astype(np.float32)
    _assert_bit_exact(model, loaded, x)


class _ScaledDense(keras.layers.Dense):
    """A custom layer (not registered): needs custom_objects to load."""

    def __init__(self, units, scale=2.0, **kwargs):
        super().__init__(units, **kwargs)
        self.scale = scale

    def call(self, inputs):
        return super().call(inputs) * self.scale

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


def test_custom_objects_round_trip(tmp_path):
    model = keras.Sequential([keras.Input((6,)), _ScaledDense(4, scale=3.0)])
    _sparsify_and_quantize(model, density=0.5, levels=3)
    path = tmp_path / "custom.sqjl"
    save_compressed(model, path)
    loaded = load_compressed(path, custom_objects={"_ScaledDense": _ScaledDense})
    assert isinstance(loaded.layers[0], _ScaledDense)
    _assert_bit_exact(model, loaded, np.ones((2, 6), np.float32))


def test_all_zero_and_dense_kernels(tmp_path):
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(7), keras.layers.Dense(3)])
    k0, k1 = compressible_kernels(model)
    k0.variable.assign(np.zeros((10, 7), np.float32))
    k1.variable.assign(np.where(np.arange(21).reshape(7, 3) % 2, 0.5, -0.25).astype(np.float32))
    breakdown = save_compressed(model, tmp_path / "z.sqjl")
    assert breakdown.layers[0].nnz == 0 and breakdown.layers[0].positions_bytes == 0
    assert breakdown.layers[1].nnz == 21 and breakdown.layers[1].positions_bytes == 0
    assert breakdown.layers[1].bits == 1
    loaded = load_compressed(tmp_path / "z.sqjl")
    _assert_bit_exact(model, loaded, np.ones((2, 10), np.float32))


def test_large_kernel_round_trip_is_fast(tmp_path):
    n_in = n_out = 2000  # 4M weights.
    model = keras.Sequential([keras.Input((n_in,)), keras.layers.Dense(n_out)])
    rng = np.random.default_rng(6)
    (kernel,) = compressible_kernels(model)
    book = rng.normal(size=256).astype(np.float32)
    values = book[rng.integers(0, 256, size=n_in * n_out)]
    values[rng.random(n_in * n_out) >= 0.05] = 0
    kernel.variable.assign(values.reshape(n_in, n_out))
    path = tmp_path / "big.sqjl"
    start = time.perf_counter()
    breakdown = save_compressed(model, path)
    loaded = load_compressed(path)
    elapsed = time.perf_counter() - start
    assert breakdown.layers[0].bits == 8
    np.testing.assert_array_equal(np.asarray(loaded.weights[0]), values.reshape(n_in, n_out))
    assert elapsed < 10.0, elapsed


# ---------------------------------------------------------------------------
# Bit packing and positions (property test).
# ---------------------------------------------------------------------------


@st.composite
def _sparse_quantized(draw):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=4)))
    density = draw(st.one_of(st.just(0.0), st.just(1.0), st.floats(0.0, 1.0)))
    bits = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    levels = int(rng.integers(1, 2**bits + 1))
    patterns = rng.choice(2**31 - 1, size=levels, replace=False).astype(np.uint32) + 1
    book = patterns.view(np.float32)  # Arbitrary nonzero bit patterns (incl. NaN, tiny).
    book = book[book != 0]
    values = book[rng.integers(0, book.size, size=shape)]
    values[rng.random(shape) >= density] = 0
    return values.astype(np.float32), bits


@settings(max_examples=150, deadline=None)
@given(_sparse_quantized())
def test_bitpack_round_trip_property(case):
    values, bits = case
    n = values.size
    positions, book, codes = bitpack.quantize_to_codes(values)
    assert book.size <= 2**bits
    assert bitpack.bits_for_codebook(book.size) <= bits
    packed = bitpack.pack_codes(codes, bits)
    assert len(packed) == (positions.size * bits + 7) // 8
    decoded_codes = bitpack.unpack_codes(packed, positions.size, bits)
    np.testing.assert_array_equal(decoded_codes, codes)
    flat = bitpack.dequantize_codes(positions, book, decoded_codes, n)
    np.testing.assert_array_equal(flat.view(np.uint32), values.reshape(-1).view(np.uint32))

    mask = values.reshape(-1) != 0
    gaps = bitpack.gaps_from_positions(positions)
    width = int(bitpack.bit_length(gaps.max())) if gaps.size else 0
    k0 = bitpack.rice_parameter(gaps)
    candidates = [(PositionEncoding.BITMAP, 0), (PositionEncoding.GAMMA, 0),
                  (PositionEncoding.FIXED, width), (PositionEncoding.FIXED, width + 3)]
    candidates += [(PositionEncoding.RICE, k) for k in {0, 1, 3, k0, k0 + 1}]
    sizes = bitpack.position_encoding_sizes(positions, n)
    for encoding, param in candidates:
        data = bitpack.encode_positions(positions, n, encoding, param)
        if (encoding, param) in sizes:
            assert len(data) == sizes[(encoding, param)], (encoding, param)
        decoded = bitpack.decode_positions(data, encoding, param, n, positions.size)
        decoded_mask = np.zeros(n, dtype=bool)
        decoded_mask[decoded] = True
        np.testing.assert_array_equal(decoded_mask, mask, err_msg=f"{encoding!r} {param}")
    encoding, param, nbytes = bitpack.choose_position_encoding(positions, n)
    assert nbytes == min(sizes.values())
    assert len(bitpack.encode_positions(positions, n, encoding, param)) == nbytes


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 64), st.integers(0, 50), st.integers(0, 2**31 - 1))
def test_pack_fixed_property(width, count, seed):
    rng = np.random.default_rng(seed)
    high = 2**width
    values = np.array([int(rng.integers(0, 2**62)) % high for _ in range(count)], dtype=np.uint64)
    data = bitpack.pack_fixed(values, width)
    assert len(data) == (count * width + 7) // 8
    np.testing.assert_array_equal(bitpack.unpack_fixed(data, count, width), values)


def test_gamma_and_rice_known_codes():
    # gamma(1) = 1, gamma(2) = 010, gamma(5) = 00101 -> unary parts then mantissas.
    data = bitpack.encode_elias_gamma(np.array([1, 2, 5]))
    # unary: "1" "01" "001" = 101001, mantissas: "0" "01" = 001 -> 101001001 + pad.
    assert data == bytes([0b10100100, 0b10000000])
    # rice k=2 of 9: q=2 -> "001", r=01.
    assert bitpack.encode_rice(np.array([9]), 2) == bytes([0b00101000])


# ---------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def test_corrupted_byte_raises_checksum_error(lenet_file, tmp_path):
    data = bytearray(_read(lenet_file[0]))
    data[len(data) // 2] ^= 0x40
    path = str(tmp_path / "bad.sqjl")
    _write(path, bytes(data))
    with pytest.raises(ValueError, match="checksum mismatch") as info:
        load_compressed(path)
    assert path in str(info.value)


def test_truncated_file_raises(lenet_file, tmp_path):
    data = _read(lenet_file[0])
    path = str(tmp_path / "short.sqjl")
    _write(path, data[:-1000])
    with pytest.raises(ValueError, match=r"truncated \(expected \d+ bytes of payload, found \d+\)"):
        load_compressed(path)
    _write(path, data[:10])
    with pytest.raises(ValueError, match="truncated"):
        load_compressed(path)
    _write(path, b"")
    with pytest.raises(ValueError, match="empty"):
        load_compressed(path)


def test_foreign_file_raises(tmp_path):
    path = str(tmp_path / "model.h5")
    _write(path, b"\x89HDF\r\n\x1a\n" + bytes(100))
    with pytest.raises(ValueError, match="magic") as info:
        load_compressed(path)
    assert f"'{path}'" in str(info.value)


def test_unsupported_version_raises(lenet_file, tmp_path):
    data = bytearray(_read(lenet_file[0]))
    struct.pack_into("<H", data, 6, 99)
    path = str(tmp_path / "future.sqjl")
    _write(path, bytes(data))
    with pytest.raises(ValueError, match="unsupported format version 99"):
        load_compressed(path)


def test_too_many_distinct_values_raises_naming_layer(tmp_path):
    model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(20, name="wide")])
    with pytest.raises(ValueError, match="'wide'.*600 distinct nonzero values"):
        save_compressed(model, tmp_path / "x.sqjl")
    assert not os.path.exists(tmp_path / "x.sqjl")


def test_bits_too_small_raises(lenet, tmp_path):
    with pytest.raises(ValueError, match="Invalid bit width 2"):
        save_compressed(lenet, tmp_path / "x.sqjl", bits=2)
    with pytest.raises(ValueError, match="one per compressible kernel"):
        save_compressed(lenet, tmp_path / "x.sqjl", bits=[3])


def test_failed_save_keeps_existing_file(lenet, lenet_file, tmp_path, monkeypatch):
    path = tmp_path / "keep.sqjl"
    save_compressed(lenet, path)
    good = _read(path)
    bad = keras.Sequential([keras.Input((30,)), keras.layers.Dense(20)])
    with pytest.raises(ValueError):
        save_compressed(bad, path)

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    small = _sparsify_and_quantize(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
    with pytest.raises(OSError, match="disk full"):
        save_compressed(small, path)
    monkeypatch.undo()
    assert _read(path) == good
    assert sorted(os.listdir(tmp_path)) == ["keep.sqjl"]


# ---------------------------------------------------------------------------
# Sizes.
# ---------------------------------------------------------------------------


def _formula_position_bytes(mask):
    """Smallest of bitmap, Elias-gamma gaps and Rice gaps (any k), by formula."""
    n = mask.size
    positions = np.flatnonzero(mask)
    gaps = np.diff(positions, prepend=-1) - 1
    candidates = [n]
    if gaps.size:
        candidates.append(int((2 * np.floor(np.log2(gaps + 1)) + 1).sum()))
        candidates += [int((gaps >> k).sum()) + gaps.size * (k + 1) for k in range(24)]
    return (min(candidates) + 7) // 8


def test_file_size_matches_formula(tmp_path):
    keras.utils.set_random_seed(7)
    model = _sparsify_and_quantize(_lenet(), density=0.02, levels=8, seed=11)
    path = tmp_path / "size.sqjl"
    breakdown = save_compressed(model, path, bits=3)
    data = _read(path)
    (arch_len,) = struct.unpack_from("<I", data, 18)
    header = 18 + 4 + arch_len
    assert breakdown.header_bytes == header

    kernels = compressible_kernels(model)
    kernel_ids = {id(k.variable) for k in kernels}
    codes = positions = books = 0
    for k in kernels:
        w = np.asarray(k.variable)
        nnz = int(np.count_nonzero(w))
        codes += 3 * nnz
        positions += _formula_position_bytes(w.reshape(-1) != 0)
        books += 4 * np.unique(w[w != 0]).size
    others = sum(4 * int(np.prod(w.shape)) for w in model.weights if id(w) not in kernel_ids)
    formula = codes / 8 + positions + books + others
    assert abs((len(data) - header) - formula) <= 0.10 * formula, (len(data) - header, formula)

    # The breakdown adds up and agrees with the formula's parts.
    parts = (breakdown.header_bytes + breakdown.metadata_bytes + breakdown.codes_bytes
             + breakdown.positions_bytes + breakdown.codebooks_bytes
             + breakdown.other_weights_bytes + breakdown.checksum_bytes)
    assert parts == breakdown.total_bytes == len(data)
    assert breakdown.positions_bytes <= positions
    assert breakdown.other_weights_bytes == others
    n_total = sum(k.size for k in kernels)
    nnz_total = sum(row.nnz for row in breakdown.layers)
    assert breakdown.paper_rate == pytest.approx(32 * n_total / (3 * nnz_total))
    assert breakdown.dense_bytes == 4 * sum(int(np.prod(w.shape)) for w in model.weights)
    assert breakdown.real_rate == pytest.approx(breakdown.dense_bytes / len(data))


def test_file_size_breakdown_without_writing(lenet, lenet_file):
    breakdown = file_size_breakdown(lenet)
    assert isinstance(breakdown, FileSizeBreakdown)
    assert breakdown == lenet_file[1]
    as_dict = breakdown.as_dict()
    assert as_dict["total_bytes"] == breakdown.total_bytes
    assert as_dict["layers"][2]["shape"] == [800, 500]
    assert {"real_rate", "paper_rate", "codes_bytes"} <= set(as_dict)
    text = str(breakdown)
    for row in breakdown.layers:
        assert row.name in text
    assert "positions" in text and "total" in text


def test_an_architecture_zlib_bomb_is_refused_before_it_unpacks(tmp_path):
    import resource
    import zlib

    from sqjl_tf.export import compressed as fmt

    packer, chunk = zlib.compressobj(9), b" " * (1 << 20)
    bomb = b"".join(packer.compress(chunk) for _ in range(256)) + packer.flush()  # 256 MiB
    body = struct.pack("<I", len(bomb)) + bomb + struct.pack("<I", 0)
    prefix = fmt._PREFIX.pack(fmt.MAGIC, fmt.FORMAT_VERSION, 0, len(body))
    crc = zlib.crc32(body, zlib.crc32(prefix)) & 0xFFFFFFFF
    path = tmp_path / "bomb.sqjl"
    path.write_bytes(prefix + body + fmt._CHECKSUM.pack(crc))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ValueError, match="unpacks to over"):
        load_compressed(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 << 10  # KiB
