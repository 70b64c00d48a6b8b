"""CIFAR ResNets (He et al., 2016, section 4.2) for 32x32x3 inputs.

* ``resnet20`` (and the other ``6n+2`` depths): a 3x3 conv stem with 16
  channels, three stages of ``n`` basic blocks with 16/32/64 channels (the
  first block of stages 2 and 3 has stride 2), global average pooling and a
  Dense classifier.
* ``resnet50`` for CIFAR: the ImageNet bottleneck layout ``[3, 4, 6, 3]``
  (64/128/256/512 planes, expansion 4) with a CIFAR stem: one 3x3 conv, stride
  1, and no max pooling.

Shortcuts: identity when the shape is unchanged; when it changes (stride 2 or
a different channel count) a *projection* shortcut, a 1x1 convolution with
the block's stride followed by BatchNorm (option B of the paper). The
paper's CIFAR models used option A (zero-padded, subsampled identity), which
has no weights; option B adds 2,752 parameters to ``resnet20``
(272,474 in all, against 269,722 with option A).

Convolutions have no bias (they are followed by BatchNorm) and use He-normal
initialisation, as the PyTorch reference.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from sqjl_tf.models import _blocks

DEFAULT_INPUT_SHAPE = (32, 32, 3)


def resnet_cifar(
    depth: int,
    num_classes: int = 10,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    name: Optional[str] = None,
) -> keras.Model:
    """Builds a CIFAR ResNet with basic blocks and depth ``6n + 2``.

    Args:
        depth: Number of weighted layers, ``6n + 2`` (20, 32, 44, 56, 110, ...).
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``; defaults to ``(32, 32, 3)``.
        dropout: Rate of an optional Dropout before the classifier (the
            reference has none; 0 adds no layer).
        name: Model name; defaults to ``f"resnet{depth}"``.

    Returns:
        A built functional ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If ``depth`` is not of the form ``6n + 2`` or another
            argument is invalid.

    Example:

    >>> model = resnet_cifar(20)
    >>> model.output_shape
    (None, 10)
    """
    if int(depth) != depth or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"Invalid value for argument `depth`. Received: {depth!r}. "
            "Expected an integer of the form 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...)."
        )
    num_classes, dropout, inputs = _blocks._prologue(
        num_classes, dropout, input_shape, DEFAULT_INPUT_SHAPE
    )
    blocks_per_stage = (int(depth) - 2) // 6
    x = _blocks._conv(inputs, 16, 3, padding=1, name="conv1")
    x = _blocks._bn(x, name="bn1")
    x = keras.layers.ReLU(name="relu1")(x)
    for stage, filters in enumerate((16, 32, 64), start=1):
        for block in range(blocks_per_stage):
            strides = 2 if stage > 1 and block == 0 else 1
            x = _blocks._basic_block(x, filters, strides, name=f"layer{stage}_block{block}")
    outputs = _blocks._classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name or f"resnet{int(depth)}")


def resnet20(
    num_classes: int = 10,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    name: str = "resnet20",
) -> keras.Model:
    """Builds the CIFAR ResNet-20 (3 stages of 3 basic blocks, 16/32/64 channels).

    Args:
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``; defaults to ``(32, 32, 3)``.
        dropout: Rate of an optional Dropout before the classifier.
        name: Model name.

    Returns:
        A built functional ``keras.Model`` (about 272k parameters with 10
        classes) that outputs logits.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> resnet20().count_params() > 270_000
    True
    """
    return resnet_cifar(20, num_classes, input_shape, dropout, name=name)


def resnet50_cifar(
    num_classes: int = 10,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    name: str = "resnet50",
) -> keras.Model:
    """Builds ResNet-50 for CIFAR: bottlenecks ``[3, 4, 6, 3]``, CIFAR stem.

    The stem is a single 3x3 convolution with 64 filters and stride 1, without
    max pooling; the four stages have 64/128/256/512 planes (x4 output
    channels) and strides 1/2/2/2.

    Args:
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``; defaults to ``(32, 32, 3)``.
        dropout: Rate of an optional Dropout before the classifier.
        name: Model name.

    Returns:
        A built functional ``keras.Model`` (about 23.5M parameters) that
        outputs logits.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> resnet50_cifar(num_classes=100).output_shape
    (None, 100)
    """
    num_classes, dropout, inputs = _blocks._prologue(
        num_classes, dropout, input_shape, DEFAULT_INPUT_SHAPE
    )
    x = _blocks._conv(inputs, 64, 3, padding=1, name="conv1")
    x = _blocks._bn(x, name="bn1")
    x = keras.layers.ReLU(name="relu1")(x)
    for stage, (planes, blocks, stride) in enumerate(
        ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)), start=1
    ):
        for block in range(blocks):
            strides = stride if block == 0 else 1
            x = _blocks._bottleneck_block(x, planes, strides, name=f"layer{stage}_block{block}")
    outputs = _blocks._classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)
