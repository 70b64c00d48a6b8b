"""Tiny learnable datasets written in the real on-disk formats (for tests)."""

import gzip
import os

import numpy as np


def learnable_images(n, shape, rng, classes=10):
    """uint8 images whose class is the position of a bright band."""
    y = rng.integers(0, classes, n)
    x = rng.integers(0, 40, (n,) + shape)
    h = shape[0] // classes
    for i, label in enumerate(y):
        x[i, label * h:(label + 1) * h] = 250
    return x.astype(np.uint8), y.astype(np.uint8)


_IDX_CODES = {np.dtype("uint8"): 0x08, np.dtype("int32"): 0x0C, np.dtype("float32"): 0x0D}


def idx_bytes(array):
    """``array`` (uint8, int32 or float32) as the bytes of an IDX file."""
    array = np.asarray(array)
    header = bytes([0, 0, _IDX_CODES[array.dtype], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path, array, gz=True):
    """Writes ``array`` as an IDX file at ``path`` (``path + ".gz"``, gzip, when ``gz``)."""
    payload = idx_bytes(array)
    path = str(path)
    if gz:
        path, payload = path + ".gz", gzip.compress(payload)
    with open(path, "wb") as f:
        f.write(payload)
    return path


def write_mnist_like(folder, splits, gz=True):
    """Writes ``{"train": (x, y), "t10k": (x, y)}`` as the four MNIST IDX files in ``folder``."""
    os.makedirs(folder, exist_ok=True)
    for split, (x, y) in splits.items():
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte"), np.asarray(x, np.uint8), gz)
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte"), np.asarray(y, np.uint8), gz)
    return folder


def write_fashion_mnist(folder, train=256, test=128, seed=0):
    """Writes gzip IDX files of a learnable 28x28 10-class dataset into ``folder``."""
    rng = np.random.default_rng(seed)
    return write_mnist_like(folder, {split: learnable_images(n, (28, 28), rng)
                                     for split, n in (("train", train), ("t10k", test))})


def linear_task(n=1024, seed=0):
    """(x, y): 16 Gaussian features, 4 classes given by a random linear map."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 16)).astype("float32")
    y = np.argmax(x @ rng.standard_normal((16, 4)), 1).astype("int32")
    return x, y


def mlp(hidden, seed=0):
    """A seeded 16 -> hidden (relu) -> 4 Keras MLP for :func:`linear_task`."""
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((16,)), keras.layers.Dense(hidden, activation="relu"), keras.layers.Dense(4)]
    )


def fake_checkpoint(run_folder):
    """Makes ``run_folder`` look checkpointed (a ``latest.ckpt`` folder whose pointer names
    ``ckpt-1``, with no checkpoint behind it): enough for what only asks whether a run started."""
    folder = os.path.join(str(run_folder), "latest.ckpt")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "checkpoint"), "w") as f:
        f.write('model_checkpoint_path: "ckpt-1"\nall_model_checkpoint_paths: "ckpt-1"\n')
    return folder


# -------------------------------------------------- a crafted TensorFlow checkpoint
# A TF checkpoint's index is a table of blocks, each followed by a type byte and the masked
# CRC-32C of the block and that byte; TensorFlow checks them. To forge an entry, the blocks
# are found (where a checksum matches) and signed again after the edit.

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def _masked_crc(crc):
    crc ^= 0xFFFFFFFF
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _signed_spans(data):
    """``[(start, end)]``: each block with its type byte, whose checksum follows it."""
    spans, start, crc, end = [], 0, 0xFFFFFFFF, 0
    while end < len(data) - 48:  # the last 48 bytes are the footer
        crc = _CRC32C[(crc ^ data[end]) & 0xFF] ^ (crc >> 8)
        if int.from_bytes(data[end + 1:end + 5], "little") == _masked_crc(crc):
            spans.append((start, end + 1))
            start = end = end + 5
            crc = 0xFFFFFFFF
        else:
            end += 1
    return spans


def _sign(data, spans):
    data = bytearray(data)
    for start, end in spans:
        crc = 0xFFFFFFFF
        for byte in data[start:end]:
            crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
        data[end:end + 4] = _masked_crc(crc).to_bytes(4, "little")
    return bytes(data)


def crafted_checkpoint(folder, model):
    """A checkpoint folder of ``model`` whose index declares a 16 TB state tensor (1 MB saved).

    The tensor (state ``big``) has shape (8,) * 6 in the data and (127,) * 6 in the
    index: TensorFlow would allocate what the index declares before reading.
    """
    import tensorflow as tf

    from sqjl_tf.checkpoint import save_checkpoint

    prefix = save_checkpoint(str(folder), model, metadata={"epoch": 1},
                             variables={"big": tf.Variable(tf.zeros((8,) * 6))})
    index = open(prefix + ".index", "rb").read()
    dims = b"\x12\x02\x08\x08" * 6  # TensorShapeProto: six `dim { size: 8 }`
    assert index.count(dims) == 1
    with open(prefix + ".index", "wb") as f:
        f.write(_sign(index.replace(dims, b"\x12\x02\x08\x7f" * 6), _signed_spans(index)))
    return str(folder)
