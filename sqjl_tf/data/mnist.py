"""MNIST and Fashion-MNIST from IDX files (or a prepared TFDS dataset).

Preprocessing follows the reference: ``ToTensor()`` then
``Normalize((0.1307,), (0.3081,))`` for MNIST. Fashion-MNIST is normalised with
its own training-set statistics, mean 0.2860 and std 0.3530. There is no
augmentation. Images are 28x28x1 float32, labels int32 in [0, 10).
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf.data import _pipeline
from sqjl_tf.data.idx import read_idx

MEAN = {"mnist": (0.1307,), "fashion_mnist": (0.2860,)}
STD = {"mnist": (0.3081,), "fashion_mnist": (0.3530,)}

# Searched after `data_dir` (tests may patch this).
SYSTEM_DATA_DIRS = {
    "mnist": ("/usr/share/datasets/mnist",),
    # Debian package dataset-fashion-mnist.
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
}
# Sub-folders of `data_dir` also searched (torchvision and common layouts).
_SUBDIRS = {
    "mnist": ("", "mnist", "MNIST/raw", "MNIST"),
    "fashion_mnist": ("", "fashion_mnist", "fashion-mnist", "FashionMNIST/raw", "FashionMNIST"),
}
_PRETTY = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_PREFIX = {"train": "train", "test": "t10k"}


def _candidates(stem: str) -> List[str]:
    """File names accepted for e.g. ``train-images-idx3-ubyte``."""
    dotted = stem.replace("-idx", ".idx")  # As unpacked by some archivers.
    return [stem, stem + ".gz", dotted, dotted + ".gz"]


def _find(name: str, split: str, data_dir: Optional[str]) -> Optional[Tuple[str, str]]:
    """Returns the (images, labels) paths of a split, or None when not found."""
    dirs = []
    if data_dir:
        dirs += [os.path.join(data_dir, sub) for sub in _SUBDIRS[name]]
    dirs += list(SYSTEM_DATA_DIRS.get(name, ()))
    prefix = _PREFIX[split]
    for folder in dirs:
        found = []
        for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
            for candidate in _candidates(f"{prefix}-{kind}"):
                path = os.path.join(folder, candidate)
                if os.path.isfile(path):
                    found.append(path)
                    break
        if len(found) == 2:
            return found[0], found[1]
    return None


def _missing_error(name: str, split: str, data_dir: Optional[str]) -> FileNotFoundError:
    prefix = _PREFIX[split]
    hint = " (or install Debian's dataset-fashion-mnist)" if name == "fashion_mnist" else ""
    return FileNotFoundError(
        f"{_PRETTY[name]} not found: expected {prefix}-images-idx3-ubyte[.gz] and "
        f"{prefix}-labels-idx1-ubyte[.gz] in `data_dir`={data_dir!r} (or one of its "
        f"sub-folders {', '.join(repr(s) for s in _SUBDIRS[name] if s)}){hint}, "
        f"or a prepared TFDS dataset {name!r} in `data_dir`. "
        f"Also searched: {', '.join(SYSTEM_DATA_DIRS.get(name, ())) or 'nothing else'}."
    )


def _preprocess(name: str):
    mean, std = MEAN[name], STD[name]

    def fn(image, label, rng_seed):
        del rng_seed  # No augmentation.
        image = tf.reshape(image, (28, 28, 1))
        return _pipeline._normalize(image, mean, std), tf.cast(label, tf.int32)

    return fn


def _load(
    name: str, data_dir: Optional[str], split: str, opts: _pipeline._Options
) -> Tuple[tf.data.Dataset, _pipeline.DatasetInfo]:
    """Loads MNIST or Fashion-MNIST; see :func:`sqjl_tf.data.load_dataset`."""
    paths = _find(name, split, data_dir)
    if paths is not None:
        images, labels = read_idx(paths[0]), read_idx(paths[1])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"Invalid {_PRETTY[name]} files {paths}: images of shape {images.shape} "
                f"and labels of shape {labels.shape} (expected (N, 28, 28) and (N,))."
            )
        if opts.limit is not None:
            images, labels = images[: opts.limit], labels[: opts.limit]
        logging.info("Read %d %s %s examples from %s.", len(images), name, split, paths[0])
        inside = os.path.abspath(paths[0]).startswith(os.path.abspath(data_dir or "") + os.sep)
        if data_dir and not inside:
            logging.warning("No %s files in `data_dir`=%r: read the system's copy in %s.",
                            _PRETTY[name], data_dir, os.path.dirname(paths[0]))
        ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
        num_examples, source = len(images), os.path.dirname(paths[0])
    elif _pipeline._tfds_prepared(name, data_dir):
        ds, num_examples, _ = _pipeline._tfds_load(
            name, split, data_dir, shuffle=opts.shuffle, seed=opts.seed, limit=opts.limit
        )
        source = f"tfds:{name}"
    else:
        raise _missing_error(name, split, data_dir)
    ds = _pipeline._finish(ds, _preprocess(name), opts, default_shuffle_buffer=num_examples)
    info = _pipeline.DatasetInfo(
        name=name,
        split=split,
        num_classes=10,
        input_shape=(28, 28, 1),
        num_examples=num_examples,
        mean=MEAN[name],
        std=STD[name],
        source=source,
    )
    return ds, info
