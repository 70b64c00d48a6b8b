"""CIFAR-10 from the binary version files (or a prepared TFDS dataset).

Files: ``data_batch_1.bin`` ... ``data_batch_5.bin`` (train) and
``test_batch.bin`` (test), in ``data_dir`` or ``data_dir/cifar-10-batches-bin``.
Each record is one label byte then 3,072 pixel bytes: the 32x32 red plane,
then green, then blue, row-major.

Preprocessing: training examples are augmented as the reference (torchvision
``RandomCrop(32, padding=4)`` with zero padding, then
``RandomHorizontalFlip()``); all images are normalised with the CIFAR-10
training-set statistics, mean (0.4914, 0.4822, 0.4465) and std
(0.2470, 0.2435, 0.2616).
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf.data import _pipeline

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
_RECORD_BYTES = 1 + 32 * 32 * 3
_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
_SUBDIRS = ("", "cifar-10-batches-bin")


def read_cifar_bin(path: Union[str, os.PathLike]) -> Tuple[np.ndarray, np.ndarray]:
    """Reads one file of the CIFAR-10 binary version.

    Args:
        path: Path of e.g. ``data_batch_1.bin``.

    Returns:
        ``(images, labels)``: uint8 images of shape ``(N, 32, 32, 3)``
        (channels_last) and uint8 labels of shape ``(N,)``.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        ValueError: If the file size is not a multiple of 3,073 bytes.

    Example:

    >>> images, labels = read_cifar_bin("cifar-10-batches-bin/test_batch.bin")
    >>> images.shape
    (10000, 32, 32, 3)
    """
    path = os.fspath(path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % _RECORD_BYTES:
        raise ValueError(
            f"Invalid value for argument `path`. Received: {path!r}. Expected a CIFAR-10 "
            f"binary file of records of {_RECORD_BYTES} bytes; it has {raw.size} bytes."
        )
    records = raw.reshape(-1, _RECORD_BYTES)
    labels = records[:, 0].copy()
    images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return images, labels


def _find(split: str, data_dir: Optional[str]) -> Optional[List[str]]:
    if not data_dir:
        return None
    for sub in _SUBDIRS:
        paths = [os.path.join(data_dir, sub, f) for f in _FILES[split]]
        if all(os.path.isfile(p) for p in paths):
            return paths
    return None


def _preprocess(augment: bool):
    def fn(image, label, rng_seed):
        image = tf.reshape(image, (32, 32, 3))
        if augment:
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(rng_seed, 2))
            image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
            image = tf.image.stateless_random_crop(image, (32, 32, 3), seed=crop_seed)
            image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
        return _pipeline._normalize(image, MEAN, STD), tf.cast(label, tf.int32)

    return fn


def _load(
    name: str, data_dir: Optional[str], split: str, opts: _pipeline._Options
) -> Tuple[tf.data.Dataset, _pipeline.DatasetInfo]:
    """Loads CIFAR-10; see :func:`sqjl_tf.data.load_dataset`."""
    paths = _find(split, data_dir)
    if paths is not None:
        parts = [read_cifar_bin(p) for p in paths]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts]).astype(np.int32)
        if labels.size and labels.max() > 9:
            raise ValueError(
                f"Invalid CIFAR-10 files {paths}: label {labels.max()} is out of [0, 10)."
            )
        if opts.limit is not None:
            images, labels = images[: opts.limit], labels[: opts.limit]
        logging.info("Read %d cifar10 %s examples from %s.", len(images), split, paths[0])
        ds = tf.data.Dataset.from_tensor_slices((images, labels))
        num_examples, source = len(images), os.path.dirname(paths[0])
    elif _pipeline._tfds_prepared("cifar10", data_dir):
        ds, num_examples, _ = _pipeline._tfds_load(
            "cifar10", split, data_dir, shuffle=opts.shuffle, seed=opts.seed, limit=opts.limit
        )
        source = "tfds:cifar10"
    else:
        raise FileNotFoundError(
            f"CIFAR-10 not found: expected {', '.join(_FILES[split])} (the binary version, "
            f"cifar-10-binary.tar.gz) in `data_dir`={data_dir!r} or in "
            f"`data_dir`/cifar-10-batches-bin, or a prepared TFDS dataset 'cifar10' in "
            "`data_dir`."
        )
    ds = _pipeline._finish(ds, _preprocess(opts.augment), opts, default_shuffle_buffer=num_examples)
    info = _pipeline.DatasetInfo(
        name=name,
        split=split,
        num_classes=10,
        input_shape=(32, 32, 3),
        num_examples=num_examples,
        mean=MEAN,
        std=STD,
        source=source,
    )
    return ds, info
