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


def write_idx(folder, stem, array, magic):
    with gzip.open(os.path.join(folder, stem + ".gz"), "wb") as f:
        f.write(np.array([magic], ">u4").tobytes())
        f.write(np.array(array.shape, ">u4").tobytes())
        f.write(array.astype(np.uint8).tobytes())


def write_fashion_mnist(folder, train=256, test=128, seed=0):
    """Writes gzip IDX files of a learnable 28x28 10-class dataset into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("t10k", test)):
        x, y = learnable_images(n, (28, 28), rng)
        write_idx(folder, f"{split}-images-idx3-ubyte", x, 0x803)
        write_idx(folder, f"{split}-labels-idx1-ubyte", y, 0x801)
    return folder


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
