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
