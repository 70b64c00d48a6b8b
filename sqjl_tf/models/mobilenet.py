"""MobileNet v1 (Howard et al., 2017) for 224x224x3 inputs."""

from __future__ import annotations

from typing import Optional, Sequence

import keras

from sqjl_tf.models import _blocks

DEFAULT_INPUT_SHAPE = (224, 224, 3)

# (pointwise filters, depthwise stride) of the 13 depthwise-separable blocks.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def _separable_block(x, filters: int, strides: int, name: str):
    """DepthwiseConv2D 3x3 + BN + ReLU, then Conv2D 1x1 + BN + ReLU."""
    if strides != 1:
        x = keras.layers.ZeroPadding2D(1, name=f"{name}_dw_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = keras.layers.DepthwiseConv2D(
        3, strides=strides, padding=padding, use_bias=False, name=f"{name}_dw"
    )(x)
    x = _blocks._bn(x, name=f"{name}_dw_bn")
    x = keras.layers.ReLU(name=f"{name}_dw_relu")(x)
    x = keras.layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer="he_normal", name=f"{name}_pw"
    )(x)
    x = _blocks._bn(x, name=f"{name}_pw_bn")
    return keras.layers.ReLU(name=f"{name}_pw_relu")(x)


def mobilenetv1(
    num_classes: int = 1000,
    input_shape: Optional[Sequence[int]] = None,
    dropout: float = 0.0,
    width_multiplier: float = 1.0,
    name: str = "mobilenetv1",
) -> keras.Model:
    """Builds MobileNet v1.

    Layout: Conv 32@3x3 stride 2 + BN + ReLU, 13 depthwise-separable blocks
    (DepthwiseConv2D 3x3 + BN + ReLU, then Conv2D 1x1 + BN + ReLU) with
    64, 128, 128, 256, 256, 512 (x6), 1024, 1024 filters, global average
    pooling and a Dense classifier. Strided convolutions pad one pixel on each
    side, as PyTorch. About 4.2M parameters with 1000 classes.

    Args:
        num_classes: Number of output logits.
        input_shape: Input shape ``(H, W, C)``; defaults to ``(224, 224, 3)``.
        dropout: Rate of an optional Dropout before the classifier (0 adds no
            layer).
        width_multiplier: The paper's alpha; scales every channel count.
        name: Model name.

    Returns:
        A built functional ``keras.Model`` that outputs logits.

    Raises:
        ValueError: If an argument is invalid.

    Example:

    >>> mobilenetv1(num_classes=10, input_shape=(32, 32, 3)).output_shape
    (None, 10)
    """
    num_classes = _blocks._check_num_classes(num_classes)
    dropout = _blocks._check_dropout(dropout)
    if not width_multiplier > 0:
        raise ValueError(
            "Invalid value for argument `width_multiplier`. "
            f"Received: {width_multiplier!r}. Expected a positive float."
        )
    shape = _blocks._input_shape(input_shape, DEFAULT_INPUT_SHAPE)

    def width(c: int) -> int:
        return max(1, int(c * width_multiplier))

    inputs = keras.Input(shape=shape, name="input")
    x = _blocks._conv(inputs, width(32), 3, strides=2, padding=1, name="conv1")
    x = _blocks._bn(x, name="bn1")
    x = keras.layers.ReLU(name="relu1")(x)
    for i, (filters, strides) in enumerate(_BLOCKS, start=1):
        x = _separable_block(x, width(filters), strides, name=f"block{i}")
    outputs = _blocks._classifier(x, num_classes, dropout)
    return keras.Model(inputs, outputs, name=name)
