"""ImageNet (ILSVRC-2012) from a class-folder tree or a prepared TFDS dataset.

Folder layout (as torchvision's ``ImageFolder``)::

    data_dir/train/<class>/*.JPEG
    data_dir/val/<class>/*.JPEG

Class indices are the sorted class-folder names of ``data_dir/train`` (of the
split's own folder when there is no train folder). Files with the extensions
``.jpeg``, ``.jpg`` and ``.png`` (any case) are read. Otherwise TFDS
``imagenet2012`` prepared in ``data_dir`` is used (never downloaded).

Preprocessing as the reference (torchvision): training images get
``RandomResizedCrop(224)`` (area 8%-100%, aspect ratio 3/4-4/3) and a random
horizontal flip; evaluation images are resized so that the shorter side is
256 and centre-cropped to 224. All are normalised with the ImageNet mean
(0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225). Resizing is bilinear
with antialiasing.
"""

from __future__ import annotations

import os
from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from absl import logging

from sqjl_tf.data import _pipeline

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_EXTENSIONS = (".jpeg", ".jpg", ".png")
_FOLDERS = {"train": ("train",), "val": ("val", "validation")}
_TFDS_SPLITS = {"train": "train", "val": "validation"}


def _class_names(folder: str) -> List[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _find_folder(split: str, data_dir: Optional[str]) -> Optional[str]:
    if not data_dir:
        return None
    for sub in _FOLDERS[split]:
        folder = os.path.join(data_dir, sub)
        if os.path.isdir(folder) and _class_names(folder):
            return folder
    return None


def _list_files(folder: str, classes: List[str]) -> Tuple[List[str], List[int]]:
    paths, labels = [], []
    for index, cls in enumerate(classes):
        cls_dir = os.path.join(folder, cls)
        if not os.path.isdir(cls_dir):
            continue
        for entry in sorted(os.listdir(cls_dir)):
            if entry.lower().endswith(_EXTENSIONS):
                paths.append(os.path.join(cls_dir, entry))
                labels.append(index)
    return paths, labels


def _random_resized_crop(image, size: int, seed):
    """torchvision ``RandomResizedCrop(size)`` with stateless random ops."""
    box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4), tf.float32),
        seed=box_seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3.0 / 4.0, 4.0 / 3.0),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, crop_size)
    image = tf.image.resize(image, (size, size), method="bilinear", antialias=True)
    return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _resize_center_crop(image, resize_size: int, crop_size: int):
    """torchvision ``Resize(resize_size)`` then ``CenterCrop(crop_size)``."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = resize_size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), crop_size)
    image = tf.image.resize(image, new_shape, method="bilinear", antialias=True)
    top = (new_shape[0] - crop_size) // 2
    left = (new_shape[1] - crop_size) // 2
    return tf.slice(image, [top, left, 0], [crop_size, crop_size, 3])


def _preprocess(opts: _pipeline._Options, from_files: bool):
    def fn(image, label, rng_seed):
        if from_files:
            image = tf.io.decode_image(tf.io.read_file(image), channels=3, expand_animations=False)
        if opts.augment:
            image = _random_resized_crop(image, opts.image_size, rng_seed)
        else:
            image = _resize_center_crop(image, opts.resize_size, opts.image_size)
        image = tf.ensure_shape(image, (opts.image_size, opts.image_size, 3))
        return _pipeline._normalize(image, MEAN, STD), tf.cast(label, tf.int32)

    return fn


def _load(
    name: str, data_dir: Optional[str], split: str, opts: _pipeline._Options
) -> Tuple[tf.data.Dataset, _pipeline.DatasetInfo]:
    """Loads ImageNet; see :func:`sqjl_tf.data.load_dataset`."""
    folder = _find_folder(split, data_dir)
    if folder is not None:
        train_folder = _find_folder("train", data_dir)
        classes = _class_names(train_folder or folder)
        paths, labels = _list_files(folder, classes)
        if not paths:
            raise FileNotFoundError(
                f"ImageNet {split} folder {folder!r} has class folders but no image files "
                f"({', '.join(_EXTENSIONS)})."
            )
        if opts.limit is not None:
            paths, labels = paths[: opts.limit], labels[: opts.limit]
        logging.info("Found %d imagenet %s images in %d classes under %s.",
                     len(paths), split, len(classes), folder)
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int32)))
        num_examples, num_classes, source, from_files = len(paths), len(classes), folder, True
    elif _pipeline._tfds_prepared("imagenet2012", data_dir):
        ds, num_examples, num_classes = _pipeline._tfds_load(
            "imagenet2012", _TFDS_SPLITS[split], data_dir,
            shuffle=opts.shuffle, seed=opts.seed, limit=opts.limit,
        )
        source, from_files = "tfds:imagenet2012", False
    else:
        raise FileNotFoundError(
            f"ImageNet not found: expected the class-folder tree `data_dir`/{_FOLDERS[split][0]}"
            f"/<class>/*.JPEG in `data_dir`={data_dir!r}, or a prepared TFDS dataset "
            "'imagenet2012' in `data_dir`."
        )
    default_buffer = num_examples if from_files else _pipeline.DEFAULT_TFDS_SHUFFLE_BUFFER
    ds = _pipeline._finish(ds, _preprocess(opts, from_files), opts, default_buffer)
    info = _pipeline.DatasetInfo(
        name=name,
        split=split,
        num_classes=num_classes,
        input_shape=(opts.image_size, opts.image_size, 3),
        num_examples=num_examples,
        mean=MEAN,
        std=STD,
        source=source,
    )
    return ds, info
