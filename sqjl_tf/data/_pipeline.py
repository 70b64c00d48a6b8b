"""Private parts shared by the input pipelines: info, batching, normalisation."""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf
from absl import logging

DEFAULT_TFDS_SHUFFLE_BUFFER = 10_000


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Description of a dataset returned by :func:`sqjl_tf.data.load_dataset`.

    Attributes:
        name: Dataset name (``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``,
            ``"imagenet"``).
        split: ``"train"`` or ``"test"`` (``"val"`` for ImageNet).
        num_classes: Number of classes.
        input_shape: Shape ``(H, W, C)`` of one preprocessed image.
        num_examples: Number of examples in the split (after ``limit``).
        mean: Per-channel mean subtracted from the images in [0, 1].
        std: Per-channel standard deviation the images are divided by.
        source: Where the data was read, e.g. a folder or ``"tfds:mnist"``.
    """

    name: str
    split: str
    num_classes: int
    input_shape: Tuple[int, int, int]
    num_examples: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    source: str


@dataclasses.dataclass(frozen=True)
class _Options:
    """Pipeline options of :func:`sqjl_tf.data.load_dataset`, validated."""

    batch_size: int
    shuffle: bool
    seed: Optional[int]
    drop_remainder: bool
    limit: Optional[int]
    augment: bool
    shuffle_buffer: Optional[int]
    num_parallel_calls: int
    image_size: int
    resize_size: int


def _normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """uint8 (or [0, 255] float) image -> float32 ``(x / 255 - mean) / std``.

    Equals torchvision's ``ToTensor()`` followed by ``Normalize(mean, std)``.
    """
    image = tf.cast(image, tf.float32) / 255.0
    mean = tf.constant(mean, tf.float32)
    std = tf.constant(std, tf.float32)
    return (image - mean) / std


def _check_positive_int(value, arg: str, allow_none: bool = False) -> Optional[int]:
    """Validates a positive integer argument."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"Invalid value for argument `{arg}`. Received: {value!r}. "
            "Expected a positive integer" + (" or None." if allow_none else ".")
        )
    return value


def _finish(
    ds: tf.data.Dataset,
    map_fn: Callable[..., Tuple[tf.Tensor, tf.Tensor]],
    opts: _Options,
    default_shuffle_buffer: int,
) -> tf.data.Dataset:
    """Shuffles, preprocesses, batches and prefetches a dataset of raw examples.

    ``map_fn(x, label, rng_seed)`` receives a shape-``[2]`` int64 seed for
    stateless random ops. The seeds come from ``tf.data.Dataset.random``, seeded
    with ``opts.seed``, and differ between epochs; with a seed the whole
    pipeline (order and augmentation) is deterministic.
    """
    if opts.shuffle:
        buffer = opts.shuffle_buffer or default_shuffle_buffer
        ds = ds.shuffle(max(1, buffer), seed=opts.seed, reshuffle_each_iteration=True)
    rng = tf.data.Dataset.random(seed=opts.seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip((ds, rng))
    ds = ds.map(
        lambda example, rng_seed: map_fn(example[0], example[1], rng_seed),
        num_parallel_calls=opts.num_parallel_calls,
        deterministic=True if opts.seed is not None else None,
    )
    batch_size = opts.batch_size
    count = int(ds.cardinality())  # known for the file readers; < 0 when unknown
    if not opts.drop_remainder and 0 < count < batch_size:
        batch_size = count  # the same one batch, but tf.data reserves batch_size examples' memory
    ds = ds.batch(batch_size, drop_remainder=opts.drop_remainder)
    if opts.seed is not None:
        options = tf.data.Options()
        options.deterministic = True
        ds = ds.with_options(options)
    return ds.prefetch(tf.data.AUTOTUNE)


def _tfds_prepared(tfds_name: str, data_dir: Optional[str]) -> bool:
    """Whether ``data_dir`` holds a prepared TFDS dataset (without importing tfds)."""
    if not data_dir:
        return False
    root = os.path.join(data_dir, tfds_name)
    if not os.path.isdir(root):
        return False
    for _, _, files in os.walk(root):
        if "dataset_info.json" in files:
            return True
    return False


def _tfds_load(
    tfds_name: str,
    tfds_split: str,
    data_dir: str,
    *,
    shuffle: bool,
    seed: Optional[int],
    limit: Optional[int],
) -> Tuple[tf.data.Dataset, int, int]:
    """Loads a prepared TFDS split as ``(image uint8, label)`` pairs, never downloading.

    Returns:
        ``(dataset, num_examples, num_classes)``.
    """
    import tensorflow_datasets as tfds  # Lazy: slow to import.

    builder = tfds.builder(tfds_name, data_dir=data_dir)
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {tfds_name!r} is not prepared in `data_dir`={data_dir!r}."
        )
    read_config = tfds.ReadConfig(shuffle_seed=seed)
    ds = builder.as_dataset(
        split=tfds_split, shuffle_files=shuffle, as_supervised=True, read_config=read_config
    )
    num_examples = builder.info.splits[tfds_split].num_examples
    num_classes = builder.info.features["label"].num_classes
    if limit is not None:
        ds = ds.take(limit)
        num_examples = min(num_examples, limit)
    logging.info("Reading tfds:%s[%s] from %s.", tfds_name, tfds_split, data_dir)
    return ds, num_examples, num_classes
