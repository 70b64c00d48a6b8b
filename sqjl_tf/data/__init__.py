"""tf.data input pipelines with the reference's preprocessing.

:func:`load_dataset` returns a batched, prefetched ``tf.data.Dataset`` of
``(image float32, label int32)`` and a :class:`DatasetInfo`. Datasets:
``mnist``, ``fashion_mnist`` (IDX files), ``cifar10`` (binary version files)
and ``imagenet`` (class-folder tree), each also from a TFDS dataset prepared
in ``data_dir``. Nothing is ever downloaded.
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import tensorflow as tf

from sqjl_tf.data import _pipeline, cifar, imagenet, mnist
from sqjl_tf.data._pipeline import DatasetInfo
from sqjl_tf.data.cifar import read_cifar_bin
from sqjl_tf.data.idx import read_idx

__all__ = [
    "DatasetInfo",
    "available_datasets",
    "load_dataset",
    "read_cifar_bin",
    "read_idx",
]

_LOADERS = {
    "mnist": mnist._load,
    "fashion_mnist": mnist._load,
    "cifar10": cifar._load,
    "imagenet": imagenet._load,
}
_ALIASES = {"fashion-mnist": "fashion_mnist", "fmnist": "fashion_mnist",
            "cifar-10": "cifar10", "imagenet2012": "imagenet", "ilsvrc2012": "imagenet"}
_EVAL_SPLITS = ("test", "val", "validation")


def available_datasets() -> Tuple[str, ...]:
    """Names accepted by :func:`load_dataset`.

    Returns:
        The dataset names, sorted.

    Example:

    >>> available_datasets()
    ('cifar10', 'fashion_mnist', 'imagenet', 'mnist')
    """
    return tuple(sorted(_LOADERS))


def load_dataset(
    name: str,
    data_dir: Optional[str] = None,
    batch_size: int = 128,
    split: str = "train",
    *,
    shuffle: Optional[bool] = None,
    seed: Optional[int] = None,
    drop_remainder: bool = False,
    limit: Optional[int] = None,
    augment: Optional[bool] = None,
    shuffle_buffer: Optional[int] = None,
    image_size: int = 224,
    resize_size: int = 256,
    num_parallel_calls: int = tf.data.AUTOTUNE,
) -> Tuple[tf.data.Dataset, DatasetInfo]:
    """Builds the input pipeline of a dataset split.

    Where the data is looked for, in order:

    * ``mnist`` / ``fashion_mnist``: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
      (optionally ``.gz``) in ``data_dir`` or its sub-folders ``mnist``,
      ``MNIST/raw`` (resp. ``fashion_mnist``, ``fashion-mnist``,
      ``FashionMNIST/raw``); then ``/usr/share/datasets/fashion-mnist``
      (Debian's ``dataset-fashion-mnist``) for Fashion-MNIST; then a TFDS
      dataset prepared in ``data_dir``.
    * ``cifar10``: ``data_batch_{1..5}.bin`` / ``test_batch.bin`` in
      ``data_dir`` or ``data_dir/cifar-10-batches-bin``; then TFDS ``cifar10``.
    * ``imagenet``: ``data_dir/train/<class>/*.JPEG`` and
      ``data_dir/val/<class>/*.JPEG``; then TFDS ``imagenet2012``.

    Preprocessing (see the modules ``mnist``, ``cifar`` and ``imagenet``):
    MNIST ``Normalize((0.1307,), (0.3081,))``; Fashion-MNIST its own mean
    0.2860 and std 0.3530; CIFAR-10 random crop 32 with padding 4 and
    horizontal flip for training, mean/std normalisation; ImageNet
    random-resized crop and flip for training, resize 256 and centre crop
    224 for evaluation, ImageNet mean/std normalisation.

    Args:
        name: ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"`` or ``"imagenet"``.
        data_dir: Folder with the data (it must exist); None searches only
            the system locations (Fashion-MNIST's Debian package).
        batch_size: Examples per batch.
        split: ``"train"``, or ``"test"`` (synonyms ``"val"``,
            ``"validation"``; ImageNet's evaluation split is its ``val``).
        shuffle: Shuffle the examples each epoch; defaults to True for the
            training split.
        seed: Seed of the shuffling and the augmentation. With a seed the
            order and the augmentation are deterministic (and differ between
            epochs); without, they are random.
        drop_remainder: Drop the last batch when it is smaller than
            ``batch_size``.
        limit: Use only the first ``limit`` examples (for smoke runs).
        augment: Apply the training augmentation; defaults to True for the
            training split.
        shuffle_buffer: Shuffle-buffer size; defaults to the whole split
            (10,000 for TFDS ImageNet).
        image_size: ImageNet crop size.
        resize_size: ImageNet shorter-side size before the evaluation crop.
        num_parallel_calls: Parallelism of the preprocessing.

    Returns:
        ``(dataset, info)``: a batched, prefetched ``tf.data.Dataset`` of
        ``(images float32 [B, H, W, C], labels int32 [B])`` and a
        :class:`DatasetInfo` (``num_classes``, ``input_shape``,
        ``num_examples``, ...).

    Raises:
        ValueError: If an argument is invalid, or a data file is damaged.
        FileNotFoundError: If ``data_dir`` does not exist, or the dataset is
            not found; the message says which files to put where.

    Example:

    >>> ds, info = load_dataset("fashion_mnist", batch_size=32, split="test", limit=64)
    >>> info.num_examples, info.input_shape
    (64, (28, 28, 1))
    >>> images, labels = next(iter(ds))
    >>> images.shape, labels.dtype
    (TensorShape([32, 28, 28, 1]), tf.int32)
    """
    if not isinstance(name, str) or _ALIASES.get(name.lower(), name.lower()) not in _LOADERS:
        raise ValueError(
            f"Invalid value for argument `name`. Received: {name!r}. "
            f"Expected one of: {', '.join(available_datasets())}."
        )
    name = _ALIASES.get(name.lower(), name.lower())
    split_key = split.lower() if isinstance(split, str) else split
    if split_key == "train":
        split = "train"
    elif split_key in _EVAL_SPLITS:
        split = "val" if name == "imagenet" else "test"
    else:
        raise ValueError(
            f"Invalid value for argument `split`. Received: {split!r}. "
            "Expected one of: train, test, val, validation."
        )
    opts = _pipeline._Options(
        batch_size=_pipeline._check_positive_int(batch_size, "batch_size"),
        shuffle=(split == "train") if shuffle is None else bool(shuffle),
        seed=seed,
        drop_remainder=bool(drop_remainder),
        limit=_pipeline._check_positive_int(limit, "limit", allow_none=True),
        augment=(split == "train") if augment is None else bool(augment),
        shuffle_buffer=_pipeline._check_positive_int(shuffle_buffer, "shuffle_buffer",
                                                     allow_none=True),
        num_parallel_calls=num_parallel_calls,
        image_size=_pipeline._check_positive_int(image_size, "image_size"),
        resize_size=_pipeline._check_positive_int(resize_size, "resize_size"),
    )
    if data_dir is not None:
        data_dir = str(data_dir)
        if not os.path.isdir(data_dir):  # not silently replaced by the system's folders
            raise FileNotFoundError(
                f"Invalid value for argument `data_dir`. Received: {data_dir!r}. "
                "Expected an existing folder (without one: only the system's dataset folders)."
            )
    return _LOADERS[name](name, data_dir, split, opts)
